/**
 * Not one of the three compared servers: the bare loop (bare.ts) that also sends the
 * publisher an `ack` (room, id, seq), as roomwire's protocol requires. It makes as many
 * socket writes per publish as roomwire (room size, not room size minus one), so
 * roomwire against it shows what roomwire costs beyond the protocol's extra write.
 * Run it with `--servers=roomwire,bare,bare-ack`.
 */
import { runBareLoop } from './bare-loop.js';

const asText = { binary: false } as const;

await runBareLoop(
  (sockets, publisher, out) => {
    for (const other of sockets) if (other !== publisher) other.send(out, asText);
  },
  { ack: true },
);
