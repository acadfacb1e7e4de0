/**
 * One unmasked WebSocket text frame (RFC 6455, 5.2), header and payload in one buffer:
 * what ws would write for `send(text)`, built once so every recipient of a broadcast
 * gets the same bytes in one socket write.
 */
export function textFrame(text: string): Buffer {
  // UTF-8 takes at most 3 bytes per UTF-16 code unit. A text whose bytes surely fit a
  // pooled slice is encoded in one pass, behind room for a 4-byte header; a 2-byte header
  // then moves up against the payload. Otherwise: measure, then encode.
  if (text.length <= MAX_POOLED_CHARS) return pooledTextFrame(text);
  const length = Buffer.byteLength(text);
  const header = length < 65_536 ? 4 : 10;
  const frame = Buffer.allocUnsafe(header + length);
  frame[0] = 0x81; // FIN, opcode 1 (text)
  if (header === 4) {
    frame[1] = 126;
    frame.writeUInt16BE(length, 2);
  } else {
    frame[1] = 127;
    frame.writeUInt32BE(Math.floor(length / 2 ** 32), 2);
    frame.writeUInt32BE(length >>> 0, 6);
  }
  frame.write(text, header);
  return frame;
}

/** The pool's size: Node's own for small buffers, so a queued frame holds no more memory than one from `Buffer.allocUnsafe`. */
const POOL_BYTES = 8 * 1024;
/** The longest text framed from the pool: its header and worst-case bytes fit in half of it, as Node's pool allows. */
const MAX_POOLED_CHARS = Math.floor((POOL_BYTES / 2 - 4) / 3);
let pool = Buffer.allocUnsafeSlow(POOL_BYTES);
let poolUsed = 0;

function pooledTextFrame(text: string): Buffer {
  if (poolUsed + 4 + text.length * 3 > POOL_BYTES) {
    pool = Buffer.allocUnsafeSlow(POOL_BYTES);
    poolUsed = 0;
  }
  const start = poolUsed;
  const length = pool.write(text, start + 4);
  let first: number;
  if (length < 126) {
    first = start + 2;
    pool[first + 1] = length;
  } else {
    first = start;
    pool[first + 1] = 126;
    pool.writeUInt16BE(length, first + 2);
  }
  pool[first] = 0x81; // FIN, opcode 1 (text)
  const end = start + 4 + length;
  // Frames are written out as they are (never changed), so the next may start right after; 8-aligned, as Node's pool does.
  poolUsed = (end + 7) & ~7;
  return pool.subarray(first, end);
}
