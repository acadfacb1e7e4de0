import type { HistoryStore, StoredMessage } from './history-store.js';

/**
 * A change made on one process that every other process of the cluster applies too:
 * `addMember`, `removeMember` and `invalidate`, the participants a broadcast found
 * (so processes not receiving the room bring their connections in), and presence.
 */
export type MembershipChange =
  | {
      /** `addMember(room, user)`. */
      readonly kind: 'add';
      /** The room. */
      readonly room: string;
      /** The user who now participates. */
      readonly user: string;
      /**
       * The room's latest seq when it was announced: the user's connections on the other
       * processes are sent the messages after it, however late they enter the room there.
       * Without it, what follows their entry.
       */
      readonly seq?: number | undefined;
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
      /**
       * The room's latest seq when it was announced: a participant the next answer of the
       * loader lists is sent the messages after it, as an `add`'s user is, when a broadcast
       * finds their connection outside the room. Without it, what follows their entry.
       */
      readonly seq?: number | undefined;
    }
  | {
      /**
       * Cluster-wide ensure-participants: the process that broadcast `seq` into `room`
       * found these participants (the ones it had not told the cluster about yet).
       * A process holding an open connection of one of them outside the room checks
       * with its own loader, puts the connection in, and sends it the messages from
       * `seq` on. Sent when a process's cached participants of a room change, never
       * per message.
       */
      readonly kind: 'participants';
      /** The room. */
      readonly room: string;
      /** Participants, at most {@link PARTICIPANTS_PER_NOTICE} per change. */
      readonly users: readonly string[];
      /** The broadcast that found them: what those connections are sent from. */
      readonly seq: number;
    }
  | {
      /**
       * The announcing process was cut off from the others and is back: the changes
       * announced meanwhile never reached it. Every other process tells it the
       * participants of its rooms again, with its next broadcast into each
       * (`participants`), so connections there outside a room are found.
       */
      readonly kind: 'rejoined';
    }
  | {
      /**
       * `user`'s first connection in the cluster opened (`online`) or its last one
       * closed (`offline`); every process sends `presence` frames to its members of
       * `rooms` (when the manager's `presence` option is on).
       */
      readonly kind: 'presence';
      /** The user. */
      readonly user: string;
      /** Online or offline. */
      readonly event: 'online' | 'offline';
      /** The rooms the user's connections were in (for `offline`, on every process so far). */
      readonly rooms: readonly string[];
    };

/** The most participants one `participants` change carries; a bigger room is told in several. */
export const PARTICIPANTS_PER_NOTICE = 1_000;

/** What a {@link Backplane} calls back into its `RoomManager`. */
export interface BackplaneHandlers {
  /**
   * A message published into a room this process subscribed to, by any process (this
   * one included). May arrive twice or out of order around a reconnect: the manager
   * orders by `seq` and drops duplicates. `except`: the connection id `publish` was
   * given, which its live delivery leaves out, wherever that connection is.
   */
  message(message: StoredMessage, except?: string): void;
  /** A change announced by another process (never one's own). */
  membership(change: MembershipChange): void;
  /**
   * The connection to the other processes was lost and is back (subscriptions active
   * again). Messages published and changes announced in between were not received: the
   * manager refills every subscribed room from the history, forgets its cached
   * participants, and announces that it is back (`rejoined`).
   */
  reconnected(): void;
  /** Something failed in the background (a heartbeat, a presence write); the backplane retries. */
  error(error: Error, phase: string): void;
  /**
   * Presence the cluster decided without a {@link ClusterPresence.track} call, for the
   * manager to send (and announce, as a `presence` change) as it does a crossing of its
   * own:
   *
   * - `offline`, on the one process that found them, for users whose every connection was
   *   on processes that stopped beating (crashed, or cut off from the cluster for longer
   *   than its node timeout), with the rooms those connections were in, as `track` was
   *   told them;
   * - `online`, on a process back from such a cut, for its users the cluster had counted
   *   out meanwhile and that are still connected here (`rooms` empty: the manager knows
   *   them).
   */
  presence(event: 'online' | 'offline', users: readonly LostUser[]): void;
}

/** A user whose presence the cluster decided: see {@link BackplaneHandlers.presence}. */
export interface LostUser {
  /** The user. */
  readonly user: string;
  /** The rooms the user's connections were in, as {@link ClusterPresence.track} was told them. */
  readonly rooms: readonly string[];
}

/** Which users are online where, across the cluster. */
export interface ClusterPresence {
  /** This process's id in the cluster. */
  readonly nodeId: string;
  /**
   * Counts one more (`+1`) or one less (`-1`) open connection of `user` on this process.
   * `rooms`, with the user's first connection here, are the rooms it is in: the rooms the
   * `offline` goes to if this process crashes (see {@link BackplaneHandlers.presence}).
   * Never rejects: when the shared record cannot be written, the backplane writes it
   * again later and resolves then (a last close during an outage is still an `offline`
   * once the store is back), or resolves `false` if the backplane closes first.
   *
   * @returns true when this change made the user online in the cluster (its first open
   * connection on any live process) or offline (its last one closed), decided
   * atomically so that exactly one process sees each crossing.
   */
  track(user: string, delta: 1 | -1, rooms?: readonly string[]): Promise<boolean>;
  /**
   * Users with at least one open connection on a live process (one whose heartbeat is
   * younger than the backplane's node timeout). A crashed process's users stop counting
   * within that timeout, and the process that finds them gone says `offline` for them
   * (see {@link BackplaneHandlers.presence}).
   */
  onlineUsers(): Promise<string[]>;
  /** The live processes on which `user` has open connections. */
  nodesOf(user: string): Promise<string[]>;
}

/** How a publish's `cid` is remembered across the cluster: see {@link Backplane.publish}. */
export interface PublishCid {
  /** The publish's identity: its user, room and `cid`, one string. */
  readonly key: string;
  /** How long it is remembered once published: the manager's `dedupeWindowMs`. */
  readonly windowMs: number;
}

/** What {@link ClusterCids.claim} found. */
export type CidClaim =
  /** Nobody has published this cid or is publishing it: this process now is. */
  | {
      /** This process now holds the cid. */
      readonly state: 'claimed';
    }
  /** A process published it within the window: answer with this message's ack. */
  | {
      /** Published within the window. */
      readonly state: 'published';
      /** The published message's id. */
      readonly id: string;
      /** The published message's seq. */
      readonly seq: number;
    }
  /** Another process is publishing it right now; ask again within `retryMs`. */
  | {
      /** Another process holds the cid. */
      readonly state: 'busy';
      /** How long the other process's claim has left, in ms. */
      readonly retryMs: number;
    };

/**
 * The cluster's memory of publishes in progress, so a retry on another process does not
 * run the application's `onPublish` hook a second time while the first is running.
 */
export interface ClusterCids {
  /**
   * Claims `key` for this process for `holdMs` (the claim lapses after that if this
   * process never publishes or releases it: a crashed process blocks no retry for longer).
   */
  claim(key: string, holdMs: number): Promise<CidClaim>;
  /** Drops this process's claim of `key` (its publish was refused, so a retry may publish). A published key stays. */
  release(key: string): Promise<void>;
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
   *
   * With `cid`, a client publish is delivered once in the cluster: when a publish with
   * the same `cid.key` was published within its window, on any process, nothing is
   * published and the call resolves that earlier message's `id` and `seq` (the other
   * fields are this call's). Check and publish are one atomic step. A backplane that
   * ignores `cid` leaves the manager's own per-process window as the only one.
   *
   * With `except` (a `broadcast()` whose excepted connection is not on this process),
   * hand it to every subscriber's `handlers.message` with the message, so the process
   * that holds that connection leaves it out. A backplane that drops it leaves that
   * connection getting the message.
   */
  publish(message: Omit<StoredMessage, 'seq'>, cid?: PublishCid, except?: string): Promise<StoredMessage>;
  /**
   * Optional: publishes in progress, by `cid`. With it, a client's retry on another
   * process waits for the first attempt instead of running `onPublish` alongside it.
   */
  readonly cids?: ClusterCids | undefined;
  /** Starts receiving the room's messages; resolves once the subscription is active. */
  subscribe(room: string): Promise<void>;
  /** Stops receiving the room's messages. */
  unsubscribe(room: string): Promise<void>;
  /** Tells every other process about a change (never calls this process's own `membership` handler). */
  announce(change: MembershipChange): Promise<void>;
  /** Leaves the cluster: stops the heartbeat, removes this process's presence, unsubscribes. */
  close(): Promise<void>;
}
