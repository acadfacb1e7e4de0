import { z } from 'zod';
import { MAX_CID_LENGTH, MAX_REF_LENGTH, MAX_ROOM_LENGTH } from './limits.js';

/** A room name: 1 to 256 characters. */
export const roomSchema = z.string().min(1).max(MAX_ROOM_LENGTH);

/** A frame's `ref`: a string of at most 64 characters. */
export const refSchema = z.string().max(MAX_REF_LENGTH);

const seqSchema = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);

/** Schemas of every client frame, by `type`. Unknown extra fields are ignored. */
export const clientFrameSchemas = {
  join: z.object({ type: z.literal('join'), room: roomSchema, ref: refSchema.optional() }),
  leave: z.object({ type: z.literal('leave'), room: roomSchema, ref: refSchema.optional() }),
  publish: z.object({
    type: z.literal('publish'),
    room: roomSchema,
    // Present but possibly null: `data` is any JSON, and a missing one is a bad request.
    data: z.custom<unknown>((value) => value !== undefined, { message: 'data is required' }),
    cid: z.string().min(1).max(MAX_CID_LENGTH).optional(),
    ref: refSchema.optional(),
  }),
  resume: z.object({
    type: z.literal('resume'),
    rooms: z.record(roomSchema, seqSchema),
    ref: refSchema.optional(),
  }),
  ping: z.object({ type: z.literal('ping'), ref: refSchema.optional() }),
} as const;

/** The `type`s a client may send. */
export type ClientFrameType = keyof typeof clientFrameSchemas;
