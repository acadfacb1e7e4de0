/**
 * A `Map` and a `Set` for collections that almost always hold one entry: a connection's
 * rooms (most connections are in one) and a user's connections (most users have one).
 *
 * A `Map` or `Set` allocates its hash table with room for several entries on creation,
 * about 150 to 250 bytes of heap even for one. These keep the first entry in a field and
 * make the real `Map` or `Set` only when a second one arrives; from then on it holds every
 * entry, in insertion order, and it stays even if they shrink back to one. Lookups of a
 * one-entry collection compare with `===`, which is `SameValueZero` for the strings and
 * objects they hold.
 */

/** A `Map<K, V>` that holds its first entry without a hash table. `undefined` is not a key. */
export class SmallMap<K extends string | object, V> {
  private onlyKey: K | undefined = undefined;
  private onlyValue: V | undefined = undefined;
  private map: Map<K, V> | undefined = undefined;

  get size(): number {
    if (this.map) return this.map.size;
    return this.onlyKey === undefined ? 0 : 1;
  }

  has(key: K): boolean {
    return this.map ? this.map.has(key) : this.onlyKey === key;
  }

  get(key: K): V | undefined {
    if (this.map) return this.map.get(key);
    return this.onlyKey === key ? this.onlyValue : undefined;
  }

  set(key: K, value: V): this {
    if (this.map) this.map.set(key, value);
    else if (this.onlyKey === undefined || this.onlyKey === key) {
      this.onlyKey = key;
      this.onlyValue = value;
    } else {
      this.map = new Map([[this.onlyKey, this.onlyValue as V]]).set(key, value);
      this.onlyKey = undefined;
      this.onlyValue = undefined;
    }
    return this;
  }

  delete(key: K): boolean {
    if (this.map) return this.map.delete(key);
    if (this.onlyKey !== key) return false;
    this.onlyKey = undefined;
    this.onlyValue = undefined;
    return true;
  }

  /** The keys, in insertion order, as a new array: safe to use while entries are deleted. */
  keyList(): K[] {
    if (this.map) return [...this.map.keys()];
    return this.onlyKey === undefined ? [] : [this.onlyKey];
  }
}

/**
 * A `Set<T>` that holds its first element without a hash table. `undefined` is not an
 * element. Deleting while iterating is safe, as with a `Set`; an element added while
 * iterating may not be visited (a `Set` would visit it).
 */
export class SmallSet<T extends string | object> implements Iterable<T> {
  private only: T | undefined = undefined;
  private set: Set<T> | undefined = undefined;

  get size(): number {
    if (this.set) return this.set.size;
    return this.only === undefined ? 0 : 1;
  }

  has(value: T): boolean {
    return this.set ? this.set.has(value) : this.only === value;
  }

  add(value: T): this {
    if (this.set) this.set.add(value);
    else if (this.only === undefined) this.only = value;
    else if (this.only !== value) {
      this.set = new Set([this.only, value]);
      this.only = undefined;
    }
    return this;
  }

  delete(value: T): boolean {
    if (this.set) return this.set.delete(value);
    if (this.only !== value) return false;
    this.only = undefined;
    return true;
  }

  [Symbol.iterator](): Iterator<T> {
    // The Set's own iterator, or an array's: no generator to allocate and resume at each step.
    if (this.set) return this.set.values();
    return (this.only === undefined ? NONE : [this.only]).values();
  }
}

const NONE: readonly never[] = [];
