import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { SmallMap, SmallSet } from '../../src/small-collections.js';

const KEYS = ['a', 'b', 'c', 'd'] as const;
const key = fc.constantFrom(...KEYS);

type MapOp = { op: 'set'; key: string; value: number } | { op: 'delete'; key: string };
const mapOp: fc.Arbitrary<MapOp> = fc.oneof(
  fc.record({ op: fc.constant('set' as const), key, value: fc.integer() }),
  fc.record({ op: fc.constant('delete' as const), key }),
);

type SetOp = { op: 'add' | 'delete'; value: string };
const setOp: fc.Arbitrary<SetOp> = fc.record({ op: fc.constantFrom('add' as const, 'delete' as const), value: key });

describe('SmallMap', () => {
  it('answers as a Map does after any sequence of sets and deletes', () => {
    fc.assert(
      fc.property(fc.array(mapOp, { maxLength: 30 }), (ops) => {
        const small = new SmallMap<string, number>();
        const model = new Map<string, number>();
        for (const step of ops) {
          if (step.op === 'set') {
            expect(small.set(step.key, step.value)).toBe(small);
            model.set(step.key, step.value);
          } else {
            expect(small.delete(step.key)).toBe(model.delete(step.key));
          }
          expect(small.size).toBe(model.size);
          expect(small.keyList()).toEqual([...model.keys()]);
          for (const k of KEYS) {
            expect(small.has(k)).toBe(model.has(k));
            expect(small.get(k)).toBe(model.get(k));
          }
        }
      }),
    );
  });

  it('hands out a key list that deleting does not change', () => {
    const small = new SmallMap<string, number>().set('a', 1).set('b', 2);
    const keys = small.keyList();
    for (const k of keys) small.delete(k);
    expect(keys).toEqual(['a', 'b']);
    expect(small.size).toBe(0);
  });
});

describe('SmallSet', () => {
  it('answers and iterates as a Set does after any sequence of adds and deletes', () => {
    fc.assert(
      fc.property(fc.array(setOp, { maxLength: 30 }), (ops) => {
        const small = new SmallSet<string>();
        const model = new Set<string>();
        for (const step of ops) {
          if (step.op === 'add') {
            expect(small.add(step.value)).toBe(small);
            model.add(step.value);
          } else {
            expect(small.delete(step.value)).toBe(model.delete(step.value));
          }
          expect(small.size).toBe(model.size);
          expect([...small]).toEqual([...model]);
          for (const k of KEYS) expect(small.has(k)).toBe(model.has(k));
        }
      }),
    );
  });

  it('visits what a Set visits when elements are deleted during the iteration', () => {
    // The room manager's loops over a user's connections may close (and so delete) any of
    // them, the one visited or another: none still in the set may be skipped.
    fc.assert(
      fc.property(
        fc.uniqueArray(key, { minLength: 0, maxLength: KEYS.length }),
        fc.array(fc.array(key, { maxLength: 2 }), { maxLength: KEYS.length }),
        (initial, deletions) => {
          const walk = (set: { delete(value: string): boolean } & Iterable<string>): string[] => {
            const visited: string[] = [];
            for (const value of set) {
              for (const victim of deletions[visited.length] ?? []) set.delete(victim);
              visited.push(value);
            }
            return visited;
          };
          const small = new SmallSet<string>();
          for (const value of initial) small.add(value);
          expect(walk(small)).toEqual(walk(new Set(initial)));
        },
      ),
    );
  });
});
