import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { encodeAck, encodeData, encodeMessageFrame, encodeServerFrame } from '../../src/protocol/encode.js';

/**
 * The hand-built encodings of the hot path must give exactly the text the one general
 * encoder gives for the same frame, whatever the names hold (quotes, escapes, emoji).
 */
describe('protocol encoding', () => {
  const name = fc.string({ unit: 'binary', maxLength: 40 });

  it('builds an ack from a template that matches encodeServerFrame, with and without ref', () => {
    fc.assert(
      fc.property(name, name, fc.nat(), fc.option(name, { nil: undefined }), (room, id, seq, ref) => {
        const frame = ref === undefined ? { type: 'ack' as const, room, id, seq } : { type: 'ack' as const, room, id, seq, ref };
        expect(encodeAck(JSON.stringify(room), id, seq, ref)).toBe(encodeServerFrame(frame));
      }),
    );
  });

  it('builds a message frame that matches encodeServerFrame, with the names given as JSON or not', () => {
    fc.assert(
      fc.property(name, name, fc.nat(), name, fc.jsonValue(), fc.nat(), (room, id, seq, from, data, ts) => {
        const message = { room, id, seq, from, ts };
        const expected = encodeServerFrame({ type: 'message', room, id, seq, from, data: JSON.parse(encodeData(data)) as unknown, ts });
        expect(encodeMessageFrame(message, encodeData(data))).toBe(expected);
        expect(encodeMessageFrame(message, encodeData(data), JSON.stringify(room), JSON.stringify(from))).toBe(expected);
      }),
    );
  });
});
