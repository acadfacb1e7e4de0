/**
 * roomwire as an application would run it: RoomManager with the ws adapter, every
 * default left alone (history, membership cache, heartbeat), a bench authenticator
 * that reads `?user=` and an in-memory loader with the scenario's rooms.
 */
import { createServer } from 'node:http';
import { RoomManager } from 'roomwire';
import { attachWebSocket } from 'roomwire/ws';
import { topologyFromArgv } from '../lib/topology.js';
import { runBenchServer } from './harness.js';
import { benchManagerOptions, reportManagerErrors } from './roomwire-app.js';

const topology = topologyFromArgv(process.argv);

const manager = new RoomManager(benchManagerOptions(topology));
reportManagerErrors(manager, 'roomwire bench server');

const server = createServer((_request, response) => response.writeHead(404).end());
attachWebSocket(manager, { server, path: '/' });
await runBenchServer(server, () => manager.stats().connections);
