import { RoomwireError } from '../errors.js';
import type { MessageFrame, ServerFrame } from './frames.js';

/**
 * Encodes one server frame. The one place frames become text, so a broadcast encodes
 * its `message` once and sends the same string to every connection.
 */
export function encodeServerFrame(frame: ServerFrame): string {
  return JSON.stringify(frame);
}

/**
 * Encodes a message's `data` to JSON before the message takes a seq, so data that JSON
 * cannot encode (a BigInt, a cycle, nesting too deep) is refused instead of leaving a
 * hole in the room's seqs. `undefined` becomes `null`, as the frame would carry it.
 *
 * @throws {RoomwireError} `bad_request` when JSON cannot encode the data.
 */
export function encodeData(data: unknown): string {
  let json: string | undefined;
  try {
    json = JSON.stringify(data);
  } catch (error) {
    throw new RoomwireError('bad_request', 'message data cannot be encoded as JSON', { cause: error });
  }
  return json ?? 'null';
}

/**
 * Encodes a `message` frame around data already encoded by {@link encodeData}: the data
 * is encoded once per message, not again for the frame.
 */
export function encodeMessageFrame(message: Omit<MessageFrame, 'type' | 'data' | 'ref'>, dataJson: string): string {
  return `{"type":"message","room":${JSON.stringify(message.room)},"id":${JSON.stringify(message.id)},"seq":${message.seq},"from":${JSON.stringify(message.from)},"data":${dataJson},"ts":${message.ts}}`;
}
