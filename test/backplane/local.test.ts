import { LocalBus, type Backplane, type LocalBackplane } from '../../src/index.js';
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
