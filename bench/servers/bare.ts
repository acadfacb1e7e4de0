/**
 * The practical limit: a bare `ws` server with a hand-written Map<room, Set<socket>>
 * (bare-loop.ts). Each message is encoded once into one Buffer that every socket of the
 * room is sent with `ws.send`.
 */
import { runBareLoop } from './bare-loop.js';

const asText = { binary: false } as const;

await runBareLoop((sockets, publisher, out) => {
  for (const other of sockets) if (other !== publisher) other.send(out, asText);
});
