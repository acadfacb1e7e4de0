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
 * is encoded once per message, not again for the frame. A caller that keeps the room's
 * and the sender's names as JSON passes them (`roomJson`, `fromJson`), so names that
 * every message repeats are not encoded again for each.
 */
export function encodeMessageFrame(
  message: Omit<MessageFrame, 'type' | 'data' | 'ref'>,
  dataJson: string,
  roomJson = JSON.stringify(message.room),
  fromJson = JSON.stringify(message.from),
): string {
  return `{"type":"message","room":${roomJson},"id":${JSON.stringify(message.id)},"seq":${message.seq},"from":${fromJson},"data":${dataJson},"ts":${message.ts}}`;
}

/**
 * Encodes an `ack` frame, the answer to every accepted publish: the same text as
 * {@link encodeServerFrame} gives for it, without walking an object. `roomJson` is the
 * room's name as JSON.
 */
export function encodeAck(roomJson: string, id: string, seq: number, ref: string | undefined): string {
  const refJson = ref === undefined ? '' : `,"ref":${JSON.stringify(ref)}`;
  return `{"type":"ack","room":${roomJson},"id":${JSON.stringify(id)},"seq":${seq}${refJson}}`;
}
