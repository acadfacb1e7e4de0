/**
 * Not one of the three compared servers: the bare loop (bare-loop.ts) with the WebSocket
 * frame built once per message (`WebSocket.Sender.frame`) and the same header and payload
 * written to every socket, as Socket.IO's adapter does with `wsPreEncodedFrame`. It shows
 * how far below the bare loop a broadcast can go by not calling `ws.send` per recipient.
 * Run it with `--servers=bare,preframed,roomwire`.
 */
import * as wsModule from 'ws';
import { WebSocket } from 'ws';
import { runBareLoop } from './bare-loop.js';

/** The parts of ws's (untyped, internal) Sender this uses; engine.io relies on the same ones. */
interface FrameBuilder {
  frame(data: Buffer, options: { fin: boolean; opcode: number; mask: boolean; readOnly: boolean; rsv1: boolean }): Buffer[];
}
interface FrameSink {
  _sender: { sendFrame(list: Buffer[], cb?: () => void): void };
}

// ws's ESM entry exports its Sender class; @types/ws does not declare it.
const Sender = (wsModule as unknown as { Sender: FrameBuilder }).Sender;
const TEXT = { fin: true, opcode: 1, mask: false, readOnly: false, rsv1: false };

// Without permessage-deflate (bare-loop.ts turns it off) ws's sender never queues, so
// writing a prebuilt frame is safe.
await runBareLoop((sockets, publisher, out) => {
  const list = Sender.frame(out, TEXT);
  for (const other of sockets) {
    if (other !== publisher && other.readyState === WebSocket.OPEN) (other as unknown as FrameSink)._sender.sendFrame(list);
  }
});
