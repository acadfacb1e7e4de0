import type { MembershipLoader } from './membership-loader.js';
import { withTimeout } from './timeout.js';

/** The participants of a room as the broadcast path sees them. */
export interface MembersSnapshot {
  /** The participant user ids; null when the loader failed and nothing was known before. */
  readonly users: ReadonlySet<string> | null;
  /** True when the loader failed and `users` is the last known answer (or null). */
  readonly stale: boolean;
}

/** A cached room's participants as {@link MembershipCache.cached} shows them. */
export interface CachedMembers {
  /** The participants; undefined until the first load finishes. */
  readonly members: ReadonlySet<string> | undefined;
  /** Changes whenever `members` change: lets a caller reuse work derived from an unchanged set. */
  readonly stamp: number;
  /**
   * Given to `invalidate` before this answer was asked for: the room's seq when a change
   * the answer may show was made (the lowest, if more than one). Undefined: none.
   */
  readonly since: number | undefined;
}

interface Entry {
  members: Set<string> | undefined;
  expiresAt: number;
  loading: Promise<void> | undefined;
  /** The generation `loading` answers for: a load asked before invalidate() is not shared after it. */
  loadingFor: number;
  /** addMember/removeMember calls made while the loader is being asked, replayed onto its answer. */
  pendingOps: [add: boolean, user: string][] | undefined;
  /**
   * Bumped by invalidate(); a load that started before it is used once, by the callers
   * already waiting for it, but not kept fresh nor shared with later callers.
   */
  generation: number;
  /** Changes whenever `members` does. */
  stamp: number;
  stale: boolean;
  since: number | undefined;
}

/** Options of {@link MembershipCache}. */
export interface MembershipCacheOptions {
  ttlMs: number;
  timeoutMs: number;
  maxRooms: number;
  onError: (room: string, error: unknown) => void;
  now?: () => number;
}

/**
 * Caches `membersOf(room)` per room so ensure-participants costs a lookup, not a loader
 * call, per broadcast. Concurrent misses share one loader call; `addMember` and
 * `removeMember` apply at once, also to a load already in flight. A miss after
 * `invalidate` gets an answer asked after it, never one already on its way.
 */
export class MembershipCache {
  private readonly entries = new Map<string, Entry>();
  /** The `since` of each room's invalidations not answered yet, for its next answer (see {@link CachedMembers.since}). */
  private readonly sinces = new Map<string, number>();
  private stamps = 0;
  private readonly now: () => number;

  constructor(
    private readonly loader: MembershipLoader,
    private readonly options: MembershipCacheOptions,
  ) {
    this.now = options.now ?? Date.now;
  }

  /** The cached participants, fresh or not, without calling the loader. */
  peek(room: string): ReadonlySet<string> | undefined {
    return this.cached(room)?.members;
  }

  /**
   * What the cache holds for `room`, fresh or not, without calling the loader: its
   * participants and their stamp, in one lookup. Undefined for a room not cached.
   */
  cached(room: string): CachedMembers | undefined {
    return this.entries.get(room);
  }

  /** The room's participants: synchronously when cached and fresh, else after one load. */
  load(room: string): MembersSnapshot | Promise<MembersSnapshot> {
    const entry = this.entries.get(room);
    if (entry?.members && entry.expiresAt > this.now()) return { users: entry.members, stale: false };
    const target = entry ?? this.create(room);
    const loading = target.loading && target.loadingFor === target.generation ? target.loading : this.startLoad(room, target);
    return loading.then(() => ({ users: target.members ?? null, stale: target.stale }));
  }

  /** Adds `user` to the cached participants of `room` (no-op for a room not cached). */
  add(room: string, user: string): void {
    this.apply(room, true, user);
  }

  /** Removes `user` from the cached participants of `room`. */
  remove(room: string, user: string): void {
    this.apply(room, false, user);
  }

  /**
   * Forgets the cached answer for `room`: the next broadcast asks the loader again.
   * `since`: the room's seq when the change this is for was made; the next answer carries
   * it, until a newer one is asked for.
   */
  invalidate(room: string, since?: number): void {
    if (since !== undefined) {
      const pending = this.sinces.get(room);
      this.sinces.delete(room);
      // As many rooms as the cache keeps; the oldest is forgotten first.
      if (this.sinces.size >= this.options.maxRooms) this.sinces.delete(this.sinces.keys().next().value as string);
      this.sinces.set(room, pending === undefined ? since : Math.min(pending, since));
    }
    const entry = this.entries.get(room);
    if (!entry) return;
    if (entry.loading) {
      entry.generation++;
      entry.expiresAt = 0;
    } else {
      this.entries.delete(room);
    }
  }

  /** Forgets the cached answer of every room, as {@link invalidate} does one. */
  invalidateAll(): void {
    for (const room of [...this.entries.keys()]) this.invalidate(room);
  }

  /** Number of rooms cached. */
  get size(): number {
    return this.entries.size;
  }

  private apply(room: string, add: boolean, user: string): void {
    const entry = this.entries.get(room);
    if (!entry) return;
    if (entry.members) {
      if (add) entry.members.add(user);
      else entry.members.delete(user);
      entry.stamp = ++this.stamps;
    }
    entry.pendingOps?.push([add, user]);
  }

  private create(room: string): Entry {
    if (this.entries.size >= this.options.maxRooms) {
      // Evict the oldest rooms that are not loading (insertion order approximates age),
      // down below the cap: loads in flight are never evicted, so they can push it over.
      for (const [name, old] of this.entries) {
        if (this.entries.size < this.options.maxRooms) break;
        if (!old.loading) this.entries.delete(name);
      }
    }
    const entry: Entry = {
      members: undefined,
      expiresAt: 0,
      loading: undefined,
      loadingFor: 0,
      pendingOps: undefined,
      generation: 0,
      stamp: ++this.stamps,
      stale: false,
      since: undefined,
    };
    this.entries.set(room, entry);
    return entry;
  }

  /**
   * Starts a load of `room` into `entry`. One invalidated while in flight (its answer may
   * predate the change) is awaited first, so loads of an entry never overlap.
   */
  private startLoad(room: string, entry: Entry): Promise<void> {
    const previous = entry.loading;
    const loading = previous ? previous.then(() => this.fetch(room, entry)) : this.fetch(room, entry);
    entry.loading = loading;
    entry.loadingFor = entry.generation;
    void loading.then(() => {
      if (entry.loading === loading) entry.loading = undefined;
    });
    return loading;
  }

  private async fetch(room: string, entry: Entry): Promise<void> {
    const generation = entry.generation;
    // Asked after these invalidations: its answer may show their changes.
    const since = this.sinces.get(room);
    // Only changes made from now on can be missing from the loader's answer: the
    // application changes its data before it calls addMember or removeMember.
    const ops: [add: boolean, user: string][] = [];
    entry.pendingOps = ops;
    try {
      const answer = await withTimeout(
        Promise.resolve().then(() => this.loader.membersOf(room)),
        this.options.timeoutMs,
        `membersOf(${JSON.stringify(room)})`,
      );
      const members = toStringSet(answer);
      for (const [add, user] of ops) {
        if (add) members.add(user);
        else members.delete(user);
      }
      entry.members = members;
      entry.stamp = ++this.stamps;
      entry.stale = false;
      entry.since = since;
      entry.expiresAt = generation === entry.generation ? this.now() + this.options.ttlMs : 0;
      // Invalidated again meanwhile: the next answer carries the lowest `since` too.
      if (generation === entry.generation && since !== undefined && this.sinces.get(room) === since) this.sinces.delete(room);
    } catch (error) {
      entry.stale = true;
      entry.expiresAt = 0;
      this.options.onError(room, error);
    } finally {
      entry.pendingOps = undefined;
    }
  }
}

/** Validates a loader's answer: an iterable of strings (user ids or room names). */
export function toStringSet(answer: unknown): Set<string> {
  if (answer === null || typeof answer !== 'object' || !(Symbol.iterator in answer)) {
    throw new TypeError('membership loader must return an iterable of strings');
  }
  const set = new Set<string>();
  for (const item of answer as Iterable<unknown>) {
    if (typeof item !== 'string') throw new TypeError('membership loader returned a non-string value');
    set.add(item);
  }
  return set;
}
