import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import * as ws from 'ws';
import { textFrame } from '../../src/transports/frame.js';

/** What ws itself writes for `send(text)` on a server socket with no extension: header, then payload. */
const { Sender } = ws as unknown as {
  Sender: { frame(data: Buffer, options: { fin: boolean; rsv1: boolean; opcode: number; mask: boolean; readOnly: boolean }): Buffer[] };
};
function wsFrame(text: string): Buffer {
  return Buffer.concat(Sender.frame(Buffer.from(text), { fin: true, rsv1: false, opcode: 1, mask: false, readOnly: false }));
}

/** Text of `chars` UTF-16 code units, in 1-, 2-, 3- and 4-byte UTF-8 characters and lone surrogates. */
const text = (maxLength: number): fc.Arbitrary<string> =>
  fc
    .array(fc.constantFrom('x', 'é', '€', '😀', '\ud800', '"', '\u0000'), { maxLength })
    .map((parts) => parts.join(''));

describe('textFrame', () => {
  it('builds the frame ws would write, at every length encoding and around the pooled limit', () => {
    // 7-bit, 16-bit and 64-bit payload lengths; the pooled path ends at 1,364 code units.
    for (const length of [0, 1, 41, 42, 125, 126, 127, 1_363, 1_364, 1_365, 4_096, 65_535, 65_536, 70_000]) {
      for (const unit of ['x', 'é', '€']) {
        const sample = unit.repeat(length);
        expect(textFrame(sample).equals(wsFrame(sample))).toBe(true);
      }
    }
    fc.assert(
      fc.property(text(1_500), (sample) => {
        expect(textFrame(sample).equals(wsFrame(sample))).toBe(true);
      }),
      { numRuns: 500 },
    );
  });

  it('never changes a frame it returned, however many it builds after it', () => {
    fc.assert(
      fc.property(fc.array(text(1_400), { minLength: 1, maxLength: 60 }), (samples) => {
        const built = samples.map((sample) => [textFrame(sample), wsFrame(sample)] as const);
        for (const [frame, expected] of built) expect(frame.equals(expected)).toBe(true);
      }),
      { numRuns: 200 },
    );
  });
});
