/**
 * What a bench server promotes: a preload for investigations, not part of any run.
 *
 *   ROOMWIRE_PROMOTION=13000-19500 npm run bench -- --only=small --servers=roomwire,bare \
 *     --reps=1 --measure=20000 --warmup=3000 --server-flags=--import=./bench/lib/promotion.mjs
 *
 * Between the two times (ms since the server started) it runs V8's sampling heap profiler
 * keeping what only a mark-compact collects: objects that outlived a scavenge, the bytes
 * that fill the old generation and bring mark-compacts. A scavenge just before the stop
 * drops the young generation's garbage. Choose a window without a mark-compact of its own
 * (`--trace-gc`): one would also count the young garbage it collects. At the stop it prints
 * the largest allocation sites and writes `promotion-<pid>.heapprofile` (Chrome DevTools
 * opens it) to the working directory.
 */
import inspector from 'node:inspector';
import { writeFileSync } from 'node:fs';

const [startMs, stopMs] = (process.env.ROOMWIRE_PROMOTION ?? '8000-20000').split('-').map(Number);
const session = new inspector.Session();
session.connect();

/** @param {string} method @param {object} [params] @returns {Promise<any>} */
const post = (method, params) =>
  new Promise((resolve, reject) => session.post(method, params, (error, result) => (error ? reject(error) : resolve(result))));

setTimeout(() => {
  void post('HeapProfiler.enable').then(() =>
    post('HeapProfiler.startSampling', {
      samplingInterval: 2048,
      includeObjectsCollectedByMajorGC: true,
      includeObjectsCollectedByMinorGC: false,
    }),
  );
}, startMs).unref();

setTimeout(() => {
  // The servers run with --expose-gc; without it the young generation's garbage stays in.
  if (typeof globalThis.gc === 'function') globalThis.gc({ type: 'minor', execution: 'sync' });
  void post('HeapProfiler.stopSampling').then(({ profile }) => {
    const file = `promotion-${process.pid}.heapprofile`;
    writeFileSync(file, JSON.stringify(profile));
    console.error(`\n[promotion ${process.pid}] ${startMs}-${stopMs} ms, written to ${file}; largest sites (innermost frames first):`);
    for (const line of summarize(profile).slice(0, 12)) console.error(`  ${line}`);
  });
}, stopMs).unref();

/**
 * Bytes sampled by allocation site: the allocating frame and its two callers.
 * @param {{ head: any, samples: { nodeId: number, size: number }[] }} profile
 * @returns {string[]}
 */
function summarize(profile) {
  /** @type {Map<number, string[]>} */
  const stacks = new Map();
  /** @param {any} node @param {string[]} stack */
  const walk = (node, stack) => {
    const { functionName, url, lineNumber } = node.callFrame;
    const here = [...stack, `${functionName || '(anonymous)'} ${url.split('/').pop()}:${lineNumber + 1}`];
    stacks.set(node.id, here);
    for (const child of node.children ?? []) walk(child, here);
  };
  walk(profile.head, []);
  /** @type {Map<string, number>} */
  const bySite = new Map();
  let total = 0;
  for (const { nodeId, size } of profile.samples) {
    const site = (stacks.get(nodeId) ?? ['?']).slice(-3).reverse().join(' < ');
    bySite.set(site, (bySite.get(site) ?? 0) + size);
    total += size;
  }
  return [`${(total / 1024).toFixed(0)} KiB sampled`].concat(
    [...bySite]
      .sort((a, b) => b[1] - a[1])
      .map(([site, bytes]) => `${((bytes / total) * 100).toFixed(1).padStart(5)}%  ${site}`),
  );
}
