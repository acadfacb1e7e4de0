/**
 * The protocol decoder, the first step of every client frame:
 *   npx vitest bench --run bench/micro
 * `JSON.parse` alone is the floor; the gap to it is validation (zod) and the rest.
 */
import { Buffer } from 'node:buffer';
import { decodeClientFrame } from 'roomwire';
import { bench, describe } from 'vitest';

const publish = JSON.stringify({
  type: 'publish',
  room: 'conversation:4211',
  data: { k: 1, n: 1234, t: 98765432, x: 'the quick brown fox jumps over the lazy dog 0123' },
  ref: 'r17',
});
const publishBytes = Buffer.from(publish);
const publishWithCid = JSON.stringify({ type: 'publish', room: 'conversation:4211', data: { text: 'hello' }, cid: 'c-0f9a7d', ref: 'r18' });
const ping = JSON.stringify({ type: 'ping', ref: 'r19' });
const resume = JSON.stringify({ type: 'resume', rooms: Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`conversation:${i}`, i * 7])) });
const badJoin = JSON.stringify({ type: 'join', room: '' });

let sink = 0;

describe('decodeClientFrame', () => {
  bench('JSON.parse only (floor)', () => {
    sink += (JSON.parse(publish) as { type: string }).type.length;
  });
  bench('publish (string)', () => {
    sink += decodeClientFrame(publish).ok ? 1 : 0;
  });
  bench('publish (Buffer, as ws hands it over)', () => {
    sink += decodeClientFrame(publishBytes).ok ? 1 : 0;
  });
  bench('publish with cid', () => {
    sink += decodeClientFrame(publishWithCid).ok ? 1 : 0;
  });
  bench('ping', () => {
    sink += decodeClientFrame(ping).ok ? 1 : 0;
  });
  bench('resume of 20 rooms', () => {
    sink += decodeClientFrame(resume).ok ? 1 : 0;
  });
  bench('invalid join (error path)', () => {
    sink += decodeClientFrame(badJoin).ok ? 1 : 0;
  });
  bench('not JSON (error path)', () => {
    sink += decodeClientFrame('{"type":"publish",').ok ? 1 : 0;
  });
});

// Keeps the results observable so no engine drops the work.
export const observed = (): number => sink;
