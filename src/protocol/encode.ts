import type { ServerFrame } from './frames.js';

/**
 * Encodes one server frame. The one place frames become text, so a broadcast encodes
 * its `message` once and sends the same string to every connection.
 */
export function encodeServerFrame(frame: ServerFrame): string {
  return JSON.stringify(frame);
}
