/**
 * roomwire on the Redis backplane, one process of a cluster: the same manager as
 * roomwire.ts, plus `RedisBackplane` on an ioredis client made as docs/scaling.md shows
 * (`enableOfflineQueue: false`; the backplane owns the clients). Every process of a run
 * gets the same URL and key prefix (the second argument, JSON).
 */
import { once } from 'node:events';
import { createServer } from 'node:http';
import { Redis } from 'ioredis';
import { RoomManager } from 'roomwire';
import { RedisBackplane } from 'roomwire/redis';
import { attachWebSocket } from 'roomwire/ws';
import { BENCH_CLIENT_NAME, redisConfigFromArgv } from '../lib/redis.js';
import { topologyFromArgv } from '../lib/topology.js';
import { runBenchServer } from './harness.js';
import { benchManagerOptions, reportManagerErrors } from './roomwire-app.js';

const topology = topologyFromArgv(process.argv);
const { url, prefix } = redisConfigFromArgv(process.argv);

// The connection name tells the runner which Redis clients are the benchmark's; the subscriber (a duplicate) has it too.
const redis = new Redis(url, { enableOfflineQueue: false, autoResendUnfulfilledCommands: false, connectionName: BENCH_CLIENT_NAME });
redis.on('error', (error: Error) => console.error(`roomwire-redis bench server: redis: ${error.message}`));
// Listening before the command connection is up would only make the first upgrades wait.
await Promise.race([
  once(redis, 'ready'),
  new Promise((_, reject) => setTimeout(() => reject(new Error(`Redis at ${url} not ready within 10 s`)), 10_000).unref()),
]);

const manager = new RoomManager({
  ...benchManagerOptions(topology),
  backplane: new RedisBackplane({ redis, prefix, closeClients: true }),
});
reportManagerErrors(manager, 'roomwire-redis bench server');

const server = createServer((_request, response) => response.writeHead(404).end());
attachWebSocket(manager, { server, path: '/' });
await runBenchServer(server, () => manager.stats().connections);
