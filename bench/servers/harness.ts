import type { Server } from 'node:http';
import { writeHeapSnapshot } from 'node:v8';
import type { AddressInfo } from 'node:net';
import { reportEvent, serveRequests } from '../lib/ipc.js';
import { openFilesLimit } from '../lib/proc.js';

/** What a bench server reports when asked for its memory. */
export interface MemoryReport {
  rss: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
  arrayBuffers: number;
  /** Open connections as the server counts them (a check that the load generator is where it thinks). */
  connections: number;
}

/** What a bench server reports once it listens. */
export interface ReadyEvent {
  event: 'ready';
  port: number;
  pid: number;
  fdLimit: number | null;
}

const gc = (globalThis as { gc?: () => void }).gc;

/**
 * Listens on 127.0.0.1, port 0, reports the port to the parent and answers its
 * requests: `memory` (after a full GC when the process runs with --expose-gc).
 */
export async function runBenchServer(server: Server, connections: () => number): Promise<void> {
  serveRequests((request) => {
    if (request.cmd === 'memory') {
      gc?.();
      gc?.();
      const usage = process.memoryUsage();
      const report: MemoryReport = {
        rss: usage.rss,
        heapUsed: usage.heapUsed,
        heapTotal: usage.heapTotal,
        external: usage.external,
        arrayBuffers: usage.arrayBuffers,
        connections: connections(),
      };
      return report;
    }
    if (request.cmd === 'heap-snapshot' && typeof request.path === 'string') {
      // For finding what an idle connection holds: compare two snapshots by constructor.
      gc?.();
      return { path: writeHeapSnapshot(request.path) };
    }
    throw new Error(`unknown request ${String(request.cmd)}`);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  reportEvent('ready', { port, pid: process.pid, fdLimit: openFilesLimit() });
}
