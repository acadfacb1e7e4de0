import type { HistoryStore, StoredMessage } from './history-store.js';

/**
 * A membership change made on one process (`addMember`, `removeMember`, `invalidate`)
 * that every other process of the cluster applies too.
 */
export type MembershipChange =
  | {
      /** `addMember(room, user)`. */
      readonly kind: 'add';
      /** The room. */
      readonly room: string;
      /** The user who now participates. */
      readonly user: string;
    }
  | {
      /** `removeMember(room, user)`. */
      readonly kind: 'remove';
      /** The room. */
      readonly room: string;
      /** The user who no longer participates. */
      readonly user: string;
    }
  | {
      /** `invalidate(room)`. */
      readonly kind: 'invalidate';
      /** The room whose cached participants are forgotten. */
      readonly room: string;
    };

/** What a {@link Backplane} calls back into its `RoomManager`. */
export interface BackplaneHandlers {
  /**
   * A message published into a room this process subscribed to, by any process (this
   * one included). May arrive twice or out of order around a reconnect: the manager
   * orders by `seq` and drops duplicates.
   */
  message(message: StoredMessage): void;
  /** A membership change announced by another process (never one's own). */
  membership(change: MembershipChange): void;
  /**
   * The connection to the other processes was lost and is back (subscriptions active
   * again). Messages published in between were not received: the manager refills every
   * subscribed room from the history.
   */
  reconnected(): void;
  /** Something failed in the background (a heartbeat, a presence write); the backplane retries. */
  error(error: Error, phase: string): void;
}

/** Which users are online where, across the cluster. */
export interface ClusterPresence {
  /** This process's id in the cluster. */
  readonly nodeId: string;
  /**
   * Counts one more (`+1`) or one less (`-1`) open connection of `user` on this process.
   * Never throws and never waits: the backplane writes in the background and repairs
   * its record after a failure.
   */
  track(user: string, delta: 1 | -1): void;
  /**
   * Users with at least one open connection on a live process (one whose heartbeat is
   * younger than the backplane's node timeout). A crashed process's users stop counting
   * within that timeout.
   */
  onlineUsers(): Promise<string[]>;
  /** The live processes on which `user` has open connections. */
  nodesOf(user: string): Promise<string[]>;
}

/**
 * Carries publishes, membership changes and presence between the processes of a
 * cluster, so rooms behave as if there were one process. Give one to each
 * `RoomManager` (`backplane` option); the manager starts and closes it.
 *
 * Implementations: {@link LocalBus} (several managers in one process; tests) and
 * `RedisBackplane` from `roomwire/redis`.
 */
export interface Backplane {
  /** The cluster-wide seq and history; the manager uses it instead of its own. */
  readonly history: HistoryStore;
  /** Which users are online on which process. */
  readonly presence: ClusterPresence;
  /** Connects and starts delivering to `handlers`. Called once, by the manager. */
  start(handlers: BackplaneHandlers): Promise<void>;
  /**
   * Gives the message the room's next seq, appends it to the room's history and
   * publishes it to every process subscribed to the room, atomically, so every
   * subscriber receives a room's messages in seq order. Rejects when it cannot (the
   * shared store is unreachable): never a silent drop.
   */
  publish(message: Omit<StoredMessage, 'seq'>): Promise<StoredMessage>;
  /** Starts receiving the room's messages; resolves once the subscription is active. */
  subscribe(room: string): Promise<void>;
  /** Stops receiving the room's messages. */
  unsubscribe(room: string): Promise<void>;
  /** Tells every other process about a membership change. */
  announce(change: MembershipChange): Promise<void>;
  /** Leaves the cluster: stops the heartbeat, removes this process's presence, unsubscribes. */
  close(): Promise<void>;
}
