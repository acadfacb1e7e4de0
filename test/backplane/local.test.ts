import { describe, expect, it } from 'vitest';
import { LocalBus, type Backplane, type BackplaneHandlers, type LocalBackplane } from '../../src/index.js';
import { backplaneContract } from './contract.js';

backplaneContract('LocalBus', () => {
  const bus = new LocalBus({ nodeTimeoutMs: 600, heartbeatMs: 100 });
  return Promise.resolve({
    node: (): Backplane => bus.node(),
    crash: (node: Backplane) => (node as LocalBackplane).kill(),
    nodeTimeoutMs: 600,
    cleanup: () => Promise.resolve(),
  });
});

describe('LocalBus presence of a killed node', () => {
  const quiet: BackplaneHandlers = { message: () => undefined, membership: () => undefined, reconnected: () => undefined, presence: () => undefined, error: () => undefined };

  it('says offline once for a user who leaves another node while a killed node with them is stale but not yet swept', async () => {
    const bus = new LocalBus({ nodeTimeoutMs: 3_000, heartbeatMs: 100 });
    const [node1, node2] = [bus.node(), bus.node()];
    const said: string[] = [];
    await node1.start(quiet);
    await node2.start({ ...quiet, presence: (event, users) => said.push(...users.map(({ user }) => `${event}:${user}`)) });
    expect(await node1.presence.track('bob', 1, ['team'])).toBe(true);
    expect(await node2.presence.track('bob', 1, ['team'])).toBe(false);
    node1.kill();
    // Past nodeTimeoutMs, and not swept yet: the next heartbeat sweeps it.
    bus.nodes.get(node1.nodeId)!.lastBeat = 0;
    const closed = node2.presence.track('bob', -1);
    for (let i = 0; i < 100 && bus.nodes.has(node1.nodeId); i++) await new Promise((r) => setTimeout(r, 20));
    expect(bus.nodes.has(node1.nodeId)).toBe(false);
    // Bob's last connection in the cluster was on the killed node: its sweep is the offline, once.
    expect(await closed).toBe(false);
    expect(said).toEqual(['offline:bob']);
    await node2.close();
  });
});
