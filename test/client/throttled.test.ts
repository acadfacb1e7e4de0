import { afterEach, describe, expect, it } from 'vitest';
import { client, scriptedWebSocket, teardown } from './helpers.js';

const real = { setTimeout, clearTimeout, setInterval, clearInterval };

afterEach(async () => {
  Object.assign(globalThis, real);
  await teardown();
});

/**
 * What a browser does to a hidden tab's timers (Chrome's intensive throttling): they run
 * only at aligned wake-ups, while WebSocket events still arrive at once. Scaled down
 * here: wake-ups every 2.5 heartbeats, as Chrome's once a minute is for the default 25 s.
 */
function throttleTimers(wakeUpMs: number): void {
  const aligned = (delay: number): number => {
    const due = Date.now() + Math.max(0, delay);
    return Math.ceil(due / wakeUpMs) * wakeUpMs - Date.now();
  };
  const intervals = new Map<number, ReturnType<typeof setTimeout>>();
  let next = 0;
  Object.assign(globalThis, {
    setTimeout: (fn: () => void, delay = 0) => real.setTimeout(fn, aligned(delay)),
    setInterval: (fn: () => void, delay = 0) => {
      const id = ++next;
      const tick = (): void => {
        intervals.set(id, real.setTimeout(tick, aligned(delay)));
        fn();
      };
      intervals.set(id, real.setTimeout(tick, aligned(delay)));
      return id;
    },
    clearInterval: (id: number) => {
      real.clearTimeout(intervals.get(id));
      intervals.delete(id);
    },
  });
}

const welcome = { type: 'welcome', protocol: 1, connectionId: 'c1', user: { id: 'alice' }, rooms: [], seqs: {}, heartbeatMs: 200 };

describe('roomwire/client heartbeat with throttled timers', () => {
  it('keeps a healthy connection whose timers only wake every 2.5 heartbeats', async () => {
    // A server that welcomes and answers every ping at once, over a socket with no timers of its own.
    const { WebSocket, made } = scriptedWebSocket(
      (socket) =>
        queueMicrotask(() => {
          socket.readyState = 1;
          socket.onopen?.();
          socket.onmessage?.({ data: JSON.stringify(welcome) });
        }),
      (socket, text) => {
        if (text.includes('"ping"')) queueMicrotask(() => socket.onmessage?.({ data: '{"type":"pong"}' }));
      },
    );
    throttleTimers(500);
    const alice = client({ url: 'ws://127.0.0.1:9/ws', WebSocket });
    await new Promise((resolve) => real.setTimeout(resolve, 3_000));
    // The ping and the watchdog run in the same wake-up: silence counts from the ping.
    expect(alice.states).toEqual(['open']);
    expect(made).toHaveLength(1);
  });
});
