import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeClientFrame, type DecodeResult } from '../../src/protocol/index.js';
import { clientFrameSchemas } from '../../src/protocol/index.js';

/** Decodes a value sent as a JSON text frame. */
function decode(value: unknown): DecodeResult {
  return decodeClientFrame(JSON.stringify(value));
}

/** The refusal of a frame; fails the test when the frame was accepted. */
function refusal(result: DecodeResult): { code: string; message: string; ref?: string } {
  if (result.ok) throw new Error(`expected a refusal, got ${JSON.stringify(result.frame)}`);
  return result.error;
}

function expectBadRequest(result: DecodeResult, ref?: string): void {
  const error = refusal(result);
  expect(error.code).toBe('bad_request');
  expect(error.message.length).toBeGreaterThan(0);
  if (ref === undefined) expect(error).not.toHaveProperty('ref');
  else expect(error.ref).toBe(ref);
}

const utf8 = (text: string) => new TextEncoder().encode(text);

describe('decodeClientFrame: what is not a frame object', () => {
  it.each([
    ['empty text', ''],
    ['plain text', 'hello'],
    ['truncated JSON', '{"type":"ping"'],
    ['single quotes', "{'type':'ping'}"],
    ['trailing garbage', '{"type":"ping"} x'],
  ])('answers %s with bad_request', (_name, text) => {
    expectBadRequest(decodeClientFrame(text));
  });

  it.each([
    ['an array', '[{"type":"ping"}]'],
    ['an empty array', '[]'],
    ['a number', '42'],
    ['a string', '"ping"'],
    ['null', 'null'],
    ['a boolean', 'true'],
  ])('answers JSON that is %s with bad_request', (_name, text) => {
    expectBadRequest(decodeClientFrame(text));
  });

  it('answers a binary frame with bad_request, even when its bytes are a valid frame', () => {
    expectBadRequest(decodeClientFrame(utf8('{"type":"ping","ref":"b1"}'), true));
    expectBadRequest(decodeClientFrame('{"type":"ping"}', true));
  });

  it('answers a text frame of invalid UTF-8 bytes with bad_request', () => {
    // 0xC3 starts a two-byte sequence that 0x28 does not continue; 0xFF never occurs in UTF-8.
    expectBadRequest(decodeClientFrame(new Uint8Array([0x7b, 0x22, 0xc3, 0x28, 0x22, 0x7d])));
    expectBadRequest(decodeClientFrame(new Uint8Array([0xff, 0xfe, 0xfd])));
  });

  it('decodes a text frame given as UTF-8 bytes', () => {
    const result = decodeClientFrame(utf8('{"type":"join","room":"café ☕"}'));
    expect(result).toEqual({ ok: true, frame: { type: 'join', room: 'café ☕' } });
  });
});

describe('decodeClientFrame: type', () => {
  it('answers a frame without type with bad_request, echoing a valid ref', () => {
    expectBadRequest(decode({}));
    expectBadRequest(decode({ room: 'a' }));
    expectBadRequest(decode({ ref: 'r1' }), 'r1');
  });

  it.each([
    ['a number', 1],
    ['null', null],
    ['an object', { name: 'join' }],
    ['an array', ['join']],
    ['a boolean', true],
  ])('answers a type that is %s with bad_request, echoing a valid ref', (_name, type) => {
    expectBadRequest(decode({ type, ref: 'r2' }), 'r2');
  });

  it.each(['subscribe', 'JOIN', '', 'welcome', 'message', '__proto__', 'toString', 'constructor', 'hasOwnProperty'])(
    'answers the unknown type %j with unknown_type and echoes the ref',
    (type) => {
      const error = refusal(decode({ type, room: 'a', ref: 'u1' }));
      expect(error.code).toBe('unknown_type');
      expect(error.ref).toBe('u1');
    },
  );

  it('answers an unknown type without ref with unknown_type and no ref', () => {
    const error = refusal(decode({ type: 'subscribe' }));
    expect(error.code).toBe('unknown_type');
    expect(error).not.toHaveProperty('ref');
  });
});

describe('decodeClientFrame: ref', () => {
  it('accepts a ref of up to 64 characters and keeps it on the frame', () => {
    const ref = 'r'.repeat(64);
    expect(decode({ type: 'ping', ref })).toEqual({ ok: true, frame: { type: 'ping', ref } });
    expect(decode({ type: 'ping', ref: '' })).toEqual({ ok: true, frame: { type: 'ping', ref: '' } });
  });

  it('answers a ref of 65 characters with bad_request and does not echo it', () => {
    expectBadRequest(decode({ type: 'ping', ref: 'r'.repeat(65) }));
    expectBadRequest(decode({ type: 'join', room: 'a', ref: 'r'.repeat(1000) }));
  });

  it.each([
    ['a number', 7],
    ['null', null],
    ['an object', { id: 'x' }],
    ['an array', ['x']],
    ['a boolean', false],
  ])('answers a ref that is %s with bad_request and does not echo it', (_name, ref) => {
    expectBadRequest(decode({ type: 'ping', ref }));
  });

  it('refuses a bad ref before looking at the type', () => {
    // An unknown type with a bad ref is a bad_request: the ref makes the frame malformed.
    expectBadRequest(decode({ type: 'subscribe', ref: 5 }));
    expectBadRequest(decode({ ref: 'r'.repeat(65) }));
  });

  it('echoes a valid ref on every other refusal', () => {
    expectBadRequest(decode({ type: 'join', ref: 'e1' }), 'e1');
    expectBadRequest(decode({ type: 'publish', room: 'a', ref: 'e2' }), 'e2');
    expectBadRequest(decode({ type: 'resume', rooms: [], ref: 'e3' }), 'e3');
    expectBadRequest(decode({ type: 'leave', room: '', ref: 'e4' }), 'e4');
  });
});

describe('decodeClientFrame: fields', () => {
  it.each([
    ['join without room', { type: 'join' }],
    ['leave without room', { type: 'leave' }],
    ['publish without room', { type: 'publish', data: 1 }],
    ['publish without data', { type: 'publish', room: 'a' }],
    ['resume without rooms', { type: 'resume' }],
  ])('answers %s with bad_request', (_name, frame) => {
    expectBadRequest(decode({ ...frame, ref: 'f1' }), 'f1');
  });

  it('accepts publish with data null', () => {
    expect(decode({ type: 'publish', room: 'a', data: null })).toEqual({
      ok: true,
      frame: { type: 'publish', room: 'a', data: null },
    });
  });

  it.each([
    ['join with a numeric room', { type: 'join', room: 1 }],
    ['join with a null room', { type: 'join', room: null }],
    ['join with an array room', { type: 'join', room: ['a'] }],
    ['leave with an object room', { type: 'leave', room: { name: 'a' } }],
    ['publish with a numeric room', { type: 'publish', room: 2, data: 'x' }],
    ['publish with a numeric cid', { type: 'publish', room: 'a', data: 'x', cid: 5 }],
    ['publish with a null cid', { type: 'publish', room: 'a', data: 'x', cid: null }],
    ['resume with rooms as an array', { type: 'resume', rooms: [['a', 1]] }],
    ['resume with rooms as a string', { type: 'resume', rooms: 'a' }],
    ['resume with rooms as a number', { type: 'resume', rooms: 3 }],
    ['resume with rooms null', { type: 'resume', rooms: null }],
    ['resume with a string seq', { type: 'resume', rooms: { a: '1' } }],
    ['resume with a null seq', { type: 'resume', rooms: { a: null } }],
    ['resume with a negative seq', { type: 'resume', rooms: { a: -1 } }],
    ['resume with a fractional seq', { type: 'resume', rooms: { a: 1.5 } }],
    ['resume with an empty room name', { type: 'resume', rooms: { '': 0 } }],
    ['resume with a room name of 257 characters', { type: 'resume', rooms: { ['r'.repeat(257)]: 0 } }],
  ])('answers %s with bad_request', (_name, frame) => {
    expectBadRequest(decode({ ...frame, ref: 'w1' }), 'w1');
  });

  it('answers a seq too large to be exact with bad_request', () => {
    expectBadRequest(decodeClientFrame('{"type":"resume","rooms":{"a":1e300}}'));
  });

  it.each(['join', 'leave'] as const)('%s: refuses a room of 0 and 257 characters, accepts 1 and 256', (type) => {
    expectBadRequest(decode({ type, room: '' }));
    expectBadRequest(decode({ type, room: 'x'.repeat(257) }));
    expect(decode({ type, room: 'x' })).toEqual({ ok: true, frame: { type, room: 'x' } });
    const room = 'x'.repeat(256);
    expect(decode({ type, room })).toEqual({ ok: true, frame: { type, room } });
  });

  it('publish: refuses a room of 0 and 257 characters, accepts 256', () => {
    expectBadRequest(decode({ type: 'publish', room: '', data: 1 }));
    expectBadRequest(decode({ type: 'publish', room: 'x'.repeat(257), data: 1 }));
    expect(decode({ type: 'publish', room: 'x'.repeat(256), data: 1 }).ok).toBe(true);
  });

  it('measures room length in JavaScript string length (UTF-16 units), as PROTOCOL.md says', () => {
    // 128 astral characters are 256 UTF-16 code units: the longest room there is.
    const room = '😀'.repeat(128);
    expect(decode({ type: 'join', room }).ok).toBe(true);
    // 129 of them are 258 units: too long, although only 129 code points.
    const tooLong = '😀'.repeat(129);
    expectBadRequest(decode({ type: 'join', room: tooLong, ref: 'm1' }), 'm1');
    expectBadRequest(decode({ type: 'leave', room: tooLong, ref: 'm2' }), 'm2');
    expectBadRequest(decode({ type: 'publish', room: tooLong, data: 1, ref: 'm3' }), 'm3');
    expectBadRequest(decode({ type: 'resume', rooms: { [tooLong]: 0 }, ref: 'm4' }), 'm4');
    expectBadRequest(decode({ type: 'join', room: `${room}x` }));
  });

  it('refuses a room name with an unpaired surrogate, which has no UTF-8 form, and accepts paired ones', () => {
    for (const room of ['x\uD800', '\uDC00', 'a\uDC00\uD800b']) {
      expectBadRequest(decode({ type: 'join', room, ref: 'j' }), 'j');
      expectBadRequest(decode({ type: 'leave', room, ref: 'l' }), 'l');
      expectBadRequest(decode({ type: 'publish', room, data: 1, ref: 'p' }), 'p');
      expectBadRequest(decode({ type: 'resume', rooms: { [room]: 0 }, ref: 'r' }), 'r');
    }
    expect(decode({ type: 'publish', room: 'x\uD83D\uDE00', data: 1 }).ok).toBe(true);
  });

  it('measures ref and cid length in JavaScript string length', () => {
    // 33 astral characters are 66 UTF-16 units: over the limit of 64.
    expectBadRequest(decode({ type: 'ping', ref: '😀'.repeat(33) }));
    expectBadRequest(decode({ type: 'publish', room: 'a', data: 1, cid: '😀'.repeat(33), ref: 'c2' }), 'c2');
    expect(decode({ type: 'publish', room: 'a', data: 1, cid: '😀'.repeat(32) }).ok).toBe(true);
  });

  it('publish: accepts a cid of 0 to 64 characters, refuses 65', () => {
    for (const cid of ['c'.repeat(64), '']) {
      expect(decode({ type: 'publish', room: 'a', data: 1, cid })).toEqual({
        ok: true,
        frame: { type: 'publish', room: 'a', data: 1, cid },
      });
    }
    expectBadRequest(decode({ type: 'publish', room: 'a', data: 1, cid: 'c'.repeat(65), ref: 'c1' }), 'c1');
  });

  it('resume: accepts seq 0 and an empty rooms object', () => {
    expect(decode({ type: 'resume', rooms: { a: 0, b: 17 } })).toEqual({
      ok: true,
      frame: { type: 'resume', rooms: { a: 0, b: 17 } },
    });
    expect(decode({ type: 'resume', rooms: {} })).toEqual({ ok: true, frame: { type: 'resume', rooms: {} } });
  });

  it('resume: keeps every valid room name, including ones named like Object.prototype members', () => {
    // Room names are any string of 1 to 256 characters; "__proto__" and "constructor" are rooms too.
    const result = decodeClientFrame('{"type":"resume","rooms":{"__proto__":3,"constructor":2,"a":1}}');
    if (!result.ok) throw new Error(`refused: ${result.error.message}`);
    if (result.frame.type !== 'resume') throw new Error('not a resume frame');
    expect(Object.entries(result.frame.rooms).sort()).toEqual([
      ['__proto__', 3],
      ['a', 1],
      ['constructor', 2],
    ]);
  });
});

describe('decodeClientFrame: valid frames', () => {
  it.each([
    [{ type: 'join', room: 'general' }],
    [{ type: 'join', room: 'general', ref: 'j1' }],
    [{ type: 'leave', room: 'general', ref: 'l1' }],
    [{ type: 'publish', room: 'general', data: { text: 'hi', n: [1, 2, { deep: true }] }, cid: 'm-1', ref: 'p1' }],
    [{ type: 'publish', room: 'general', data: 'just a string' }],
    [{ type: 'publish', room: 'general', data: 0 }],
    [{ type: 'publish', room: 'general', data: false }],
    [{ type: 'publish', room: 'general', data: [] }],
    [{ type: 'resume', rooms: { general: 12, random: 0 }, ref: 's1' }],
    [{ type: 'ping' }],
    [{ type: 'ping', ref: 'x' }],
  ])('decodes %j as sent', (frame) => {
    expect(decode(frame)).toEqual({ ok: true, frame });
  });

  it('ignores unknown extra fields', () => {
    expect(decode({ type: 'ping', extra: 1, nested: { a: 1 } })).toEqual({ ok: true, frame: { type: 'ping' } });
    expect(decode({ type: 'join', room: 'a', priority: 'high', ref: 'k' })).toEqual({
      ok: true,
      frame: { type: 'join', room: 'a', ref: 'k' },
    });
    expect(decode({ type: 'publish', room: 'a', data: 1, to: ['bob'] })).toEqual({
      ok: true,
      frame: { type: 'publish', room: 'a', data: 1 },
    });
  });

  it('ignores surrounding whitespace', () => {
    expect(decodeClientFrame(' \n{"type":"ping"}\t ')).toEqual({ ok: true, frame: { type: 'ping' } });
  });
});

describe('decodeClientFrame: never throws (property)', () => {
  const codes = ['bad_request', 'unknown_type'];

  function checkOutcome(result: DecodeResult): void {
    expect(typeof result.ok).toBe('boolean');
    if (!result.ok) {
      expect(codes).toContain(result.error.code);
      expect(typeof result.error.message).toBe('string');
      if (result.error.ref !== undefined) {
        expect(typeof result.error.ref).toBe('string');
        expect(result.error.ref.length).toBeLessThanOrEqual(64);
      }
    }
  }

  it('on arbitrary strings', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme', maxLength: 300 }), (text) => {
        checkOutcome(decodeClientFrame(text));
      }),
      { numRuns: 300 },
    );
  });

  it('on arbitrary JSON values, alone and as fields of frames of every type', () => {
    const type = fc.oneof(fc.constantFrom('join', 'leave', 'publish', 'resume', 'ping'), fc.string({ maxLength: 10 }), fc.jsonValue());
    const frameLike = fc.record(
      {
        type,
        room: fc.oneof(fc.string({ maxLength: 300 }), fc.jsonValue()),
        data: fc.jsonValue(),
        cid: fc.oneof(fc.string({ maxLength: 80 }), fc.jsonValue()),
        ref: fc.oneof(fc.string({ maxLength: 80 }), fc.jsonValue()),
        rooms: fc.oneof(fc.dictionary(fc.string({ maxLength: 8 }), fc.oneof(fc.integer(), fc.double(), fc.jsonValue())), fc.jsonValue()),
      },
      { requiredKeys: [] },
    );
    fc.assert(
      fc.property(fc.oneof(fc.jsonValue(), frameLike), (value) => {
        const text = JSON.stringify(value) ?? 'null';
        checkOutcome(decodeClientFrame(text));
        checkOutcome(decodeClientFrame(utf8(text)));
        checkOutcome(decodeClientFrame(utf8(text), true));
      }),
      { numRuns: 400 },
    );
  });

  it('on arbitrary byte arrays, as text and as binary frames', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.boolean(), (bytes, isBinary) => {
        const result = decodeClientFrame(bytes, isBinary);
        checkOutcome(result);
        if (isBinary) expect(result.ok).toBe(false);
      }),
      { numRuns: 300 },
    );
  });
});

describe('publish: the hand-checked path agrees with the schema', () => {
  const field = fc.oneof(
    fc.constant(undefined),
    fc.constant(null),
    fc.integer(),
    fc.boolean(),
    fc.string({ maxLength: 3 }),
    fc.string({ minLength: 60, maxLength: 70 }),
    fc.string({ minLength: 250, maxLength: 260 }),
    fc.constant(''),
    fc.constant('x\uD800'),
    fc.dictionary(fc.string({ maxLength: 3 }), fc.integer(), { maxKeys: 2 }),
    fc.array(fc.integer(), { maxLength: 2 }),
  );

  it('accepts and refuses exactly what clientFrameSchemas.publish does, with the same frame', () => {
    fc.assert(
      fc.property(field, field, field, field, fc.boolean(), (room, data, cid, ref, extra) => {
        const object: Record<string, unknown> = { type: 'publish' };
        for (const [key, value] of Object.entries({ room, data, cid, ref })) if (value !== undefined) object[key] = value;
        if (extra) object.other = 1;
        const text = JSON.stringify(object);
        const decoded = decodeClientFrame(text);
        const parsed = clientFrameSchemas.publish.safeParse(JSON.parse(text));
        const refOk = ref === undefined || (typeof ref === 'string' && ref.length <= 64);
        expect(decoded.ok).toBe(parsed.success && refOk);
        if (decoded.ok && parsed.success) expect(decoded.frame).toEqual(parsed.data);
      }),
      { numRuns: 3_000, seed: 7 },
    );
  });
});
