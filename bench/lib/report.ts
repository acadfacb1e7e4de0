import type { ProfileSummary } from './cpuprofile.js';
import { fmt, fmtRatio, ratio } from './stats.js';
import {
  SERVER_LABEL,
  type ClusterResult,
  type ClusterSetup,
  type ClusterStep,
  type HeadlineRow,
  type IdleResult,
  type LadderResult,
  type LoadScenarioResult,
  type Meta,
  type ProfileResults,
  type Results,
  type ServerKind,
  type TargetRow,
} from './results.js';

const SERVERS: ServerKind[] = ['roomwire', 'bare', 'socketio', 'preframed', 'bare-ack', 'roomwire-base'];

function row(metric: string, values: Partial<Record<ServerKind, number>>, higherIsBetter = false): HeadlineRow {
  const rw = values.roomwire ?? Number.NaN;
  const bare = values.bare ?? Number.NaN;
  const sio = values.socketio ?? Number.NaN;
  return { metric, higherIsBetter, roomwireVsBare: ratio(rw, bare), socketioVsBare: ratio(sio, bare), roomwireVsSocketio: ratio(rw, sio) };
}

function pick<T>(summary: Partial<Record<ServerKind, T>> | undefined, get: (value: T) => number): Partial<Record<ServerKind, number>> {
  const out: Partial<Record<ServerKind, number>> = {};
  for (const server of SERVERS) {
    const value = summary?.[server];
    if (value !== undefined) out[server] = get(value);
  }
  return out;
}

/** The ratios that lead the report. */
export function headline(results: Pick<Results, 'small' | 'big' | 'ladder' | 'idle'>): HeadlineRow[] {
  const rows: HeadlineRow[] = [];
  for (const scenario of [results.small, results.big]) {
    if (!scenario) continue;
    rows.push(row(`${scenario.name}: user CPU per delivery`, pick(scenario.summary, (s) => s.userUsPerDelivery)));
    rows.push(row(`${scenario.name}: total CPU per delivery`, pick(scenario.summary, (s) => s.totalUsPerDelivery)));
    rows.push(row(`${scenario.name}: p99 latency`, pick(scenario.summary, (s) => s.p99Ms)));
  }
  if (results.ladder) {
    rows.push(row('rate ladder: highest sustained deliveries/s', pick(results.ladder.summary, (s) => s.maxSustainedDeliveriesPerS), true));
  }
  if (results.idle) {
    rows.push(row('idle: RSS per connection', pick(results.idle.summary, (s) => s.rssPerConn)));
    rows.push(row('idle: JS heap per connection', pick(results.idle.summary, (s) => s.heapPerConn)));
    rows.push(row('idle: server CPU per connection opened', pick(results.idle.summary, (s) => s.connectUserUs + s.connectSystemUs)));
  }
  return rows;
}

function met(value: number, ok: (v: number) => boolean): boolean | undefined {
  return Number.isFinite(value) ? ok(value) : undefined;
}

/**
 * roomwire against roomwire built from the `--base` source directory, in the small-rooms
 * and big-room scenarios: a change to the hot path measured side by side, in one run,
 * instead of against figures from another run (which move by a tenth between runs).
 */
export function baseComparison(results: Pick<Results, 'small' | 'big'>): string[] {
  const lines: string[] = [];
  for (const scenario of [results.small, results.big]) {
    const s = scenario?.summary;
    if (!scenario || !s?.roomwire || !s['roomwire-base']) continue;
    const user = ratio(s.roomwire.userUsPerDelivery, s['roomwire-base'].userUsPerDelivery);
    const total = ratio(s.roomwire.totalUsPerDelivery, s['roomwire-base'].totalUsPerDelivery);
    lines.push(`${scenario.name}: user CPU per delivery ${fmtRatio(user)}${pairedSpread(scenario, 'roomwire-base')}, total ${fmtRatio(total)}`);
  }
  return lines;
}

/** The targets of issue 7, each with what this run measured. */
export function targets(results: Pick<Results, 'small' | 'big' | 'ladder' | 'idle'>): TargetRow[] {
  const rows: TargetRow[] = [];
  for (const scenario of [results.small, results.big]) {
    if (!scenario) continue;
    const s = scenario.summary;
    const user = ratio(s.roomwire?.userUsPerDelivery ?? Number.NaN, s.bare?.userUsPerDelivery ?? Number.NaN);
    rows.push({ target: `${scenario.name}: user CPU per delivery ≤ 1.0× bare`, measured: fmtRatio(user) + pairedSpread(scenario), met: met(user, (v) => v <= 1.0) });
    const total = ratio(s.roomwire?.totalUsPerDelivery ?? Number.NaN, s.socketio?.totalUsPerDelivery ?? Number.NaN);
    rows.push({ target: `${scenario.name}: total server CPU ≤ 0.75× Socket.IO`, measured: fmtRatio(total), met: met(total, (v) => v <= 0.75) });
  }
  if (results.idle) {
    const s = results.idle.summary;
    const rss = ratio(s.roomwire?.rssPerConn ?? Number.NaN, s.bare?.rssPerConn ?? Number.NaN);
    rows.push({ target: 'RSS per idle authenticated connection ≤ 1.2× bare', measured: fmtRatio(rss), met: met(rss, (v) => v <= 1.2) });
  }
  if (results.small) {
    const s = results.small.summary;
    const perS = s.roomwire?.deliveriesPerS ?? Number.NaN;
    const diff = (s.roomwire?.p99Ms ?? Number.NaN) - (s.bare?.p99Ms ?? Number.NaN);
    rows.push({
      target: `p99 latency at 9,000 deliveries/s within 1 ms of bare (small rooms, ${fmt(perS)} deliveries/s measured)`,
      measured: Number.isFinite(diff) ? `${diff >= 0 ? '+' : ''}${diff.toFixed(2)} ms` : '–',
      met: met(diff, (v) => v <= 1),
    });
  }
  if (results.ladder) {
    const bare = results.ladder.runs.filter((run) => run.server === 'bare');
    const roomwire = results.ladder.runs.filter((run) => run.server === 'roomwire');
    const bareRates = new Set<number>();
    for (const run of bare) for (const step of run.steps) if (step.sustained) bareRates.add(step.rate);
    const failures: string[] = [];
    for (const rate of [...bareRates].sort((a, b) => a - b)) {
      for (const run of roomwire) {
        const step = run.steps.find((st) => st.rate === rate);
        if (!step) failures.push(`${rate} msg/s not reached (rep ${run.rep + 1})`);
        else if (step.lossRatio > 0) failures.push(`${(step.lossRatio * 100).toFixed(2)}% lost at ${rate} msg/s (rep ${run.rep + 1})`);
      }
    }
    const known = bare.length > 0 && roomwire.length > 0 && bareRates.size > 0;
    rows.push({
      target: 'No loss at any ladder step the bare loop sustains',
      measured: !known
        ? 'the bare loop sustained no step'
        : failures.length === 0
          ? `no loss at the ${bareRates.size} step(s) the bare loop sustained`
          : failures.slice(0, 3).join('; '),
      met: known ? failures.length === 0 : undefined,
    });
  }
  return rows;
}

/**
 * How far the user-CPU ratio moves from one repetition to the next: roomwire's window of
 * each rep against the bare loop's window of the same rep (they run one after the other),
 * smallest and largest. The target is judged on the ratio of the medians; this says how
 * much one run's ratio can be trusted.
 */
function pairedSpread(scenario: LoadScenarioResult, against: ServerKind = 'bare'): string {
  const ratios: number[] = [];
  for (const mine of scenario.steps.filter((step) => step.server === 'roomwire')) {
    const other = scenario.steps.find((step) => step.server === against && step.rep === mine.rep);
    if (other) ratios.push(ratio(mine.derived.userUsPerDelivery, other.derived.userUsPerDelivery));
  }
  const finite = ratios.filter(Number.isFinite);
  if (finite.length < 2) return '';
  return ` (rep by rep: ${fmtRatio(Math.min(...finite))} to ${fmtRatio(Math.max(...finite))})`;
}

const yes = (value: boolean | undefined): string => (value === undefined ? '–' : value ? 'yes' : '**no**');
const kib = (bytes: number): string => (Number.isFinite(bytes) ? (bytes / 1024).toFixed(2) : '–');

function loadTable(scenario: LoadScenarioResult): string {
  const lines = [
    `**${scenario.name}**: ${scenario.description}. ${scenario.reps} rep(s) per server, ${scenario.measureMs / 1000} s measured after ${scenario.warmupMs / 1000} s of warm-up; medians.`,
    '',
    '| server | deliveries/s | user µs/delivery | of which main thread | system µs/delivery | total µs/delivery | p50 ms | p99 ms | max ms | loss | server CPU | load gen. CPU | other load | heap / RSS after, MiB |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const server of SERVERS) {
    const s = scenario.summary[server];
    if (!s) continue;
    lines.push(
      `| ${SERVER_LABEL[server]} | ${fmt(s.deliveriesPerS)} | ${fmt(s.userUsPerDelivery)} | ${fmt(s.mainThreadUserUsPerDelivery)} | ${fmt(s.systemUsPerDelivery)} | ${fmt(s.totalUsPerDelivery)} | ${fmt(s.p50Ms)} | ${fmt(s.p99Ms)} | ${fmt(s.maxMs)} | ${fmt(s.lossRatio * 100)}% | ${fmt(s.serverCpuPct, 2)}% | ${fmt(s.loadgenCpuPct, 2)}% | ${fmt(s.otherCpuPct, 2)}% | ${fmt(s.heapAfterMiB)} / ${fmt(s.rssAfterMiB)} |`,
    );
  }
  return lines.join('\n');
}

function ladderTable(ladder: LadderResult): string {
  const lines = [
    `**rate ladder**: ${ladder.topology.connections.toLocaleString('en-US')} connections in rooms of ${ladder.topology.roomSize}, publishes/s stepped through ${ladder.rates.join(', ')} (deliveries/s = ${ladder.topology.roomSize - 1}× that); ${ladder.measureMs / 1000} s per step, ${ladder.reps} run(s) per server. A step is sustained with loss ≤ ${ladder.criteria.maxLossRatio * 100}%, p99 ≤ ${ladder.criteria.maxP99Ms} ms, no dropped connection and at least ${ladder.criteria.minSentRatio * 100}% of the rate sent; a server stops climbing at the first step with loss, p99 over ${ladder.criteria.stopP99Ms} ms, a dropped connection or a short send. Cells: p99 ms (loss); medians of the runs that reached the step.`,
    '',
    `| publishes/s | ${SERVERS.filter((s) => ladder.summary[s]).map((s) => SERVER_LABEL[s]).join(' | ')} |`,
    `| ---: | ${SERVERS.filter((s) => ladder.summary[s]).map(() => '---:').join(' | ')} |`,
  ];
  for (const rate of ladder.rates) {
    const cells = SERVERS.filter((s) => ladder.summary[s]).map((server) => {
      const point = ladder.summary[server]?.curve.find((p) => p.rate === rate);
      if (!point) return 'not reached';
      const mark = point.sustained < point.reached ? ' ✗' : '';
      return `${fmt(point.p99Ms)} (${fmt(point.lossRatio * 100)}%)${mark}`;
    });
    lines.push(`| ${rate} | ${cells.join(' | ')} |`);
  }
  lines.push(
    `| **highest sustained deliveries/s** | ${SERVERS.filter((s) => ladder.summary[s]).map((s) => `**${fmt(ladder.summary[s]?.maxSustainedDeliveriesPerS ?? Number.NaN)}**`).join(' | ')} |`,
  );
  lines.push('', '✗: at least one run did not sustain the step.');
  return lines.join('\n');
}

function idleTable(idle: IdleResult): string {
  const lines = [
    `**idle connections**: ${idle.connections.toLocaleString('en-US')} authenticated connections, each joined to its user's one room (rooms of ${idle.roomSize}); per-connection figures are the slope between ${idle.first.toLocaleString('en-US')} and ${idle.connections.toLocaleString('en-US')} connections, after a full GC, ${idle.reps} rep(s), medians.${idle.scaledDown ? ` Scaled down: ${idle.scaledDown}.` : ''}`,
    '',
    '| server | RSS/connection KiB | heap used/connection KiB | external/connection KiB | server CPU µs per connection opened (user + system) | connections opened/s |',
    '| --- | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const server of SERVERS) {
    const s = idle.summary[server];
    if (!s) continue;
    lines.push(
      `| ${SERVER_LABEL[server]} | ${kib(s.rssPerConn)} | ${kib(s.heapPerConn)} | ${kib(s.externalPerConn)} | ${fmt(s.connectUserUs)} + ${fmt(s.connectSystemUs)} | ${fmt(s.connectsPerS)} |`,
    );
  }
  return lines.join('\n');
}

/** The generated part of docs/benchmarks.md. */
export function resultsMarkdown(results: Results, chartPath: string): string {
  const m = results.meta;
  const out: string[] = [];
  out.push(
    `Run of ${m.date.slice(0, 10)} (${m.mode}, ${Math.round(m.durationS)} s): \`${m.command}\` on ${m.machine.cpus} × ${m.machine.model}, ${m.machine.memoryGiB} GiB, Linux ${m.machine.kernel}, Node ${m.machine.node}; roomwire ${m.versions.roomwire} (source), ws ${m.versions.ws}, Socket.IO ${m.versions.socketio}. Load average at start: ${m.loadAverageAtStart.map((v) => v.toFixed(2)).join(', ')}.`,
  );
  out.push(
    '',
    `roomwire source: ${m.source}; servers run as ${m.runner}. Windows measured again because other processes used over ${m.noisy.thresholdPct}% of a core meanwhile: ${m.noisy.remeasured}; kept windows still that noisy: ${m.noisy.windows} of ${m.noisy.of}. User/system split of the servers' CPU time: ${m.cpuSplit}.`,
  );
  for (const note of m.notes) out.push('', `> ${note}`);
  out.push('', '### Headline: ratios', '', 'Lower is better except where marked ↑. Ratios of the per-server medians of this one run.', '');
  out.push('| metric | roomwire / bare ws | Socket.IO / bare ws | roomwire / Socket.IO |', '| --- | ---: | ---: | ---: |');
  for (const r of results.headline) {
    out.push(`| ${r.metric}${r.higherIsBetter ? ' ↑' : ''} | ${fmtRatio(r.roomwireVsBare)} | ${fmtRatio(r.socketioVsBare)} | ${fmtRatio(r.roomwireVsSocketio)} |`);
  }
  out.push('', `![ratios against the bare ws loop, and the rate ladder](${chartPath})`, '');
  out.push('### Against the targets of issue 7', '', '| target | measured | met |', '| --- | --- | --- |');
  for (const t of results.targets) out.push(`| ${t.target} | ${t.measured} | ${yes(t.met)} |`);
  out.push('', '### Figures');
  if (results.small) out.push('', loadTable(results.small));
  if (results.big) out.push('', loadTable(results.big));
  if (results.ladder) out.push('', ladderTable(results.ladder));
  if (results.idle) out.push('', idleTable(results.idle));
  out.push('', '"server CPU", "load gen. CPU" and "other load" are in % of one core over the measured window; "other load" is what the rest of the machine used meanwhile (other processes), a sign of how noisy the run was.');
  return out.join('\n');
}

/** How the cluster scenario's two setups are called in tables. */
export function setupLabel(setup: ClusterSetup, processes: number): string {
  return setup === 'single' ? '1 process alone' : `${processes} processes on Redis`;
}

const known = (value: number | null, digits = 3): string => (value === null ? '–' : fmt(value, digits));

/**
 * What the windows on Redis say about `INFO commandstats`: whether the publish calls it
 * counted match the publishes Redis sequenced in the run's rooms (their seq counters, read
 * in the same transaction, which no other client touches).
 */
function publishEvidence(cluster: ClusterResult, steps: ClusterStep[]): string {
  const onRedis = steps.filter((s) => s.setup === 'redis' && s.run.redis !== null);
  if (onRedis.length === 0) return 'No window on Redis has Redis figures.';
  const sum = (get: (s: ClusterStep) => number): number => onRedis.reduce((a, s) => a + get(s), 0);
  const n = (value: number): string => value.toLocaleString('en-US');
  const publishes = sum((s) => s.run.redis?.publishCalls ?? 0);
  const sequenced = sum((s) => s.run.redis?.sequenced ?? 0);
  const scripts = sum((s) => (s.run.redis?.calls.evalsha ?? 0) + (s.run.redis?.calls.eval ?? 0));
  const acks = sum((s) => s.run.acks);
  const version = cluster.redis?.version ?? '?';
  const counts =
    `Over the ${onRedis.length} windows on Redis, \`cmdstat_spublish\` and \`cmdstat_publish\` together grew by ${n(publishes)} and the run's seq counters (one \`INCR\` per publish, in the same script as its \`SPUBLISH\`) by ${n(sequenced)}; ` +
    `scripts run (\`EVALSHA\`/\`EVAL\`, heartbeats included): ${n(scripts)}; acks received by the load generator: ${n(acks)}${acks === sequenced ? '' : " (acks in flight at the windows' edges make the difference)"}.`;
  if (publishes === sequenced) {
    return `${counts} The servers publish only from inside the backplane's Lua scripts, so Redis ${version} counts a publish run by a script in \`INFO commandstats\` (checked by this run, not assumed), and one broadcast costs exactly one Redis publish (an \`SPUBLISH\` on the room's sharded channel), whatever the number of members or processes.`;
  }
  return `${counts} They differ: publishes other than the broadcasts' (control-channel notices, or other clients of the same Redis, see the notes) fell in the windows, or publishes failed; the per-broadcast figures include them.`;
}

/** The generated part of the cluster section of docs/benchmarks.md. */
export function clusterMarkdown(meta: Meta, cluster: ClusterResult, jsonPath: string): string {
  const r = cluster.redis;
  const out: string[] = [
    `Run of ${meta.date.slice(0, 10)} (${meta.mode}; the scenario took ${Math.round(cluster.durationS)} s): \`${meta.command}\` on ${meta.machine.cpus} × ${meta.machine.model}, Linux ${meta.machine.kernel}, Node ${meta.machine.node}; roomwire ${meta.versions.roomwire} (${meta.source}), run as ${meta.runner}; user/system split: ${meta.cpuSplit}; Redis ${r?.version ?? '?'} on the same machine, ioredis ${r?.ioredis ?? '?'}. Raw figures of every window: [\`${jsonPath.replace(/^\.\.\//, '')}\`](${jsonPath}).`,
    '',
    `**cluster**: ${cluster.description}. Rates: ${cluster.rates.map((rate) => `${rate.toLocaleString('en-US')} publishes/s (${(rate * (cluster.topology.roomSize - 1)).toLocaleString('en-US')} deliveries/s)`).join(' and ')}. ${cluster.reps} rep(s) of each setup (alternating), each rate measured ${cluster.measureMs / 1000} s after ${cluster.warmupMs / 1000} s of warm-up on the same connections; medians. Windows are not measured again when the machine was busy.`,
    '',
    '| setup | publishes/s | deliveries/s | loss | p50 ms | p99 ms | max ms | server µs/delivery, user + system (all processes) | server CPU | redis-server CPU | redis-server µs/delivery | Redis publishes (`SPUBLISH` + `PUBLISH`) per broadcast | Redis commands per broadcast | other load |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const s of cluster.summary) {
    const pct = (value: number | null): string => (value === null ? '–' : `${fmt(value, 2)}%`);
    out.push(
      `| ${setupLabel(s.setup, s.processes)} | ${s.rate.toLocaleString('en-US')} | ${fmt(s.deliveriesPerS)} | ${fmt(s.lossRatio * 100)}% | ${fmt(s.p50Ms)} | ${fmt(s.p99Ms)} | ${fmt(s.maxMs)} | ${fmt(s.userUsPerDelivery)} + ${fmt(s.systemUsPerDelivery)} | ${pct(s.serverCpuPct)} | ${pct(s.redisCpuPct)} | ${known(s.redisUsPerDelivery)} | ${known(s.redisPublishesPerBroadcast)} | ${known(s.redisCommandsPerBroadcast)} | ${pct(s.otherCpuPct)} |`,
    );
  }
  if (cluster.comparison.length > 0) {
    out.push(
      '',
      `| publishes/s | deliveries/s, ${cluster.processes} on Redis / 1 alone | p99, ${cluster.processes} on Redis − 1 alone | p99, ${cluster.processes} on Redis / 1 alone | server CPU per delivery, ${cluster.processes} on Redis / 1 alone |`,
      '| ---: | ---: | ---: | ---: | ---: |',
    );
    for (const c of cluster.comparison) {
      const diff = Number.isFinite(c.p99DiffMs) ? `${c.p99DiffMs >= 0 ? '+' : ''}${fmt(c.p99DiffMs)} ms` : '–';
      out.push(`| ${c.rate.toLocaleString('en-US')} | ${fmtRatio(c.deliveriesRatio)} | ${diff} | ${fmtRatio(c.p99Ratio)} | ${fmtRatio(c.serverCpuRatio)} |`);
    }
  }
  out.push('', publishEvidence(cluster, cluster.steps));
  const perCommand = cluster.summary
    .filter((s) => s.setup === 'redis' && Object.keys(s.commandsPerBroadcast).length > 0)
    .map((s) => {
      const entries = Object.entries(s.commandsPerBroadcast);
      const main = entries.filter(([, calls]) => calls >= 0.01).map(([name, calls]) => `\`${name}\` ${fmt(calls)}`);
      const rest = entries.filter(([, calls]) => calls < 0.01);
      const restSum = rest.reduce((a, [, calls]) => a + calls, 0);
      const tail = rest.length === 0 ? '' : `, and ${fmt(restSum, 2)} in all of ${rest.map(([name]) => `\`${name}\``).join(', ')}`;
      return `${s.rate.toLocaleString('en-US')}/s: ${main.join(', ')}${tail}`;
    });
  if (perCommand.length > 0) {
    out.push(
      '',
      `Redis commands per broadcast with ${cluster.processes} processes, by command (INFO commandstats over the window; the commands a script runs are counted besides the \`EVALSHA\`; the rare ones are the heartbeats): ${perCommand.join('; ')}.`,
    );
  }
  const noisy = cluster.steps.filter((s) => s.derived.otherCpuPct > meta.noisy.thresholdPct).length;
  if (noisy > 0) out.push('', `> ${noisy} of ${cluster.steps.length} windows had other processes using over ${meta.noisy.thresholdPct}% of a core (the "other load" column); they were not measured again.`);
  if (r) {
    out.push(
      '',
      `Keys: every process of the run used the prefix \`${r.prefix}\`; ${r.keysDeleted.toLocaleString('en-US')} keys under it were deleted after the steps (SCAN + UNLINK), ${r.keysLeft === null ? 'an unknown number' : r.keysLeft.toLocaleString('en-US')} found left at the end.${r.pid === null ? ` redis-server's CPU: not reported (${r.pidNote ?? 'unknown process'}).` : ''}`,
    );
  }
  for (const note of cluster.notes) out.push('', `> ${note}`);
  if (cluster.failed !== undefined) out.push('', `> The scenario stopped early: ${cluster.failed}. The figures are those of the windows measured before.`);
  return out.join('\n');
}

/** The generated part of the profile section of docs/benchmarks.md. */
export function profileMarkdown(results: ProfileResults): string {
  const out: string[] = [
    `Profiled ${results.date.slice(0, 10)}: \`${results.command}\` on ${results.machine.cpus} × ${results.machine.model}, Node ${results.machine.node}; roomwire ${results.source}, run as ${results.runner}. Scenarios: ${results.scenario}.`,
    '',
    'Only the samples of the measured window count (after warm-up; connection setup excluded). Shares are of the server\'s busy (non-idle) samples, kernel time inside syscalls included: it shows as the native stream functions (`writev`). Functions are located by source module; anonymous ones are named after their nearest named caller.',
  ];
  const scenarios = [...new Set(results.profiles.map((p) => p.scenario))];
  for (const scenario of scenarios) {
    const mine = results.profiles.filter((p) => p.scenario === scenario);
    out.push('', `#### ${scenario}: where the server's time goes`, '');
    const categories = [...new Set(mine.flatMap((p) => p.categories.map((c) => c.category)))];
    out.push(`| category | ${mine.map((p) => SERVER_LABEL[p.server as ServerKind] ?? p.server).join(' | ')} |`, `| --- | ${mine.map(() => '---:').join(' | ')} |`);
    for (const category of categories) {
      out.push(`| ${category} | ${mine.map((p) => `${(p.categories.find((c) => c.category === category)?.pct ?? 0).toFixed(1)}%`).join(' | ')} |`);
    }
    out.push(
      `| *sampled busy ms per 1,000 deliveries* | ${mine.map((p) => fmt((p.busyMs * 1000) / Math.max(1, p.deliveries))).join(' | ')} |`,
    );
    for (const p of mine) {
      const label = SERVER_LABEL[p.server as ServerKind] ?? p.server;
      out.push('', `<details><summary>${scenario}, ${label}: top functions by self time</summary>`, '', '| function | where | category | self |', '| --- | --- | --- | ---: |');
      for (const r of p.self.slice(0, 20)) out.push(`| \`${r.fn}\` | ${r.where ? `\`${r.where}\`` : ''} | ${r.category} | ${r.pct.toFixed(1)}% |`);
      if (p.inclusive.length > 0) {
        out.push('', '| roomwire function (with its callees) | where | inclusive |', '| --- | --- | ---: |');
        for (const r of p.inclusive.slice(0, 15)) out.push(`| \`${r.fn}\` | \`${r.where}\` | ${r.pct.toFixed(1)}% |`);
      }
      out.push('', '</details>');
    }
  }
  return out.join('\n');
}

// ---------------------------------------------------------------- chart

const COLORS: Record<ServerKind, string> = { roomwire: '#d9480f', bare: '#495057', socketio: '#1971c2', preframed: '#2f9e44', 'bare-ack': '#868e96', 'roomwire-base': '#f08c00' };

function esc(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** An SVG of two panels: ratios against the bare loop, and p99 latency along the rate ladder. */
export function chartSvg(results: Results): string {
  const width = 960;
  const height = 450;
  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, sans-serif" font-size="12">`,
    `<rect width="${width}" height="${height}" fill="#fff"/>`,
  );

  // Panel 1: grouped bars of ratios against bare.
  const bars: { label: [string, string]; roomwire: number; socketio: number }[] = [];
  const add = (label: [string, string], key: string): void => {
    const r = results.headline.find((h) => h.metric === key);
    if (r) bars.push({ label, roomwire: r.roomwireVsBare, socketio: r.socketioVsBare });
  };
  add(['small rooms', 'user CPU'], 'small rooms: user CPU per delivery');
  add(['small rooms', 'total CPU'], 'small rooms: total CPU per delivery');
  add(['big room', 'user CPU'], 'big room: user CPU per delivery');
  add(['big room', 'total CPU'], 'big room: total CPU per delivery');
  add(['idle', 'RSS/conn'], 'idle: RSS per connection');
  add(['idle', 'heap/conn'], 'idle: JS heap per connection');
  const p1 = { x: 60, y: 40, w: 470, h: 300 };
  const finite = bars.flatMap((b) => [b.roomwire, b.socketio]).filter(Number.isFinite);
  const yMax = Math.max(2, Math.ceil(Math.max(1, ...finite) * 2) / 2);
  const y1 = (v: number): number => p1.y + p1.h - (v / yMax) * p1.h;
  parts.push(`<text x="${p1.x}" y="22" font-size="14" font-weight="600">Cost relative to the bare ws loop (lower is better)</text>`);
  for (let v = 0; v <= yMax + 1e-9; v += 0.5) {
    parts.push(`<line x1="${p1.x}" x2="${p1.x + p1.w}" y1="${y1(v)}" y2="${y1(v)}" stroke="${v === 1 ? '#495057' : '#e9ecef'}" ${v === 1 ? 'stroke-dasharray="6 4"' : ''}/>`);
    parts.push(`<text x="${p1.x - 6}" y="${y1(v) + 4}" text-anchor="end" fill="#495057">${v.toFixed(1)}×</text>`);
  }
  const group = bars.length > 0 ? p1.w / bars.length : p1.w;
  bars.forEach((bar, i) => {
    const gx = p1.x + i * group;
    const bw = Math.min(28, group / 3);
    (['roomwire', 'socketio'] as const).forEach((server, j) => {
      const value = bar[server];
      if (!Number.isFinite(value)) return;
      const x = gx + group / 2 - bw + j * bw;
      const top = y1(Math.min(value, yMax));
      parts.push(`<rect x="${x.toFixed(1)}" y="${top.toFixed(1)}" width="${(bw - 2).toFixed(1)}" height="${(p1.y + p1.h - top).toFixed(1)}" fill="${COLORS[server]}"/>`);
      parts.push(`<text x="${(x + bw / 2 - 1).toFixed(1)}" y="${(top - 4).toFixed(1)}" text-anchor="middle" font-size="10">${value.toFixed(2)}</text>`);
    });
    parts.push(`<text x="${(gx + group / 2).toFixed(1)}" y="${p1.y + p1.h + 16}" text-anchor="middle">${esc(bar.label[0])}</text>`);
    parts.push(`<text x="${(gx + group / 2).toFixed(1)}" y="${p1.y + p1.h + 30}" text-anchor="middle">${esc(bar.label[1])}</text>`);
  });
  const legend = (x: number, y: number, server: ServerKind): void => {
    parts.push(`<rect x="${x}" y="${y - 10}" width="12" height="12" fill="${COLORS[server]}"/>`, `<text x="${x + 16}" y="${y}">${SERVER_LABEL[server]}</text>`);
  };
  legend(p1.x, p1.y + p1.h + 56, 'roomwire');
  legend(p1.x + 100, p1.y + p1.h + 56, 'socketio');
  parts.push(`<text x="${p1.x + 200}" y="${p1.y + p1.h + 56}" fill="#495057">dashed line: bare ws = 1.0×</text>`);

  // Panel 2: p99 latency against deliveries/s along the ladder (log scale).
  const p2 = { x: 620, y: 40, w: 310, h: 300 };
  parts.push(`<text x="${p2.x - 40}" y="22" font-size="14" font-weight="600">Rate ladder: p99 latency</text>`);
  const ladder = results.ladder;
  if (ladder) {
    const points = SERVERS.flatMap((s) => (ladder.summary[s]?.curve ?? []).map((p) => ({ server: s, ...p })));
    const xMax = Math.max(1, ...points.map((p) => p.deliveriesPerS).filter(Number.isFinite)) * 1.05;
    const lo = 0.1;
    const hi = 1000;
    const x2 = (v: number): number => p2.x + (v / xMax) * p2.w;
    const y2 = (v: number): number => p2.y + p2.h - ((Math.log10(Math.min(hi, Math.max(lo, v))) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * p2.h;
    for (const v of [0.1, 1, 10, 100, 1000]) {
      parts.push(`<line x1="${p2.x}" x2="${p2.x + p2.w}" y1="${y2(v)}" y2="${y2(v)}" stroke="#e9ecef"/>`);
      parts.push(`<text x="${p2.x - 6}" y="${y2(v) + 4}" text-anchor="end" fill="#495057">${v} ms</text>`);
    }
    const step = Math.pow(10, Math.floor(Math.log10(xMax / 4)));
    const tick = [1, 2, 5].map((m) => m * step).find((t) => xMax / t <= 6) ?? step * 10;
    for (let v = 0; v <= xMax; v += tick) {
      parts.push(`<text x="${x2(v)}" y="${p2.y + p2.h + 16}" text-anchor="middle" fill="#495057">${v >= 1000 ? `${v / 1000}k` : v}</text>`);
    }
    parts.push(`<text x="${p2.x + p2.w / 2}" y="${p2.y + p2.h + 32}" text-anchor="middle">deliveries/s</text>`);
    SERVERS.forEach((server, i) => {
      const curve = (ladder.summary[server]?.curve ?? []).filter((p) => Number.isFinite(p.deliveriesPerS) && Number.isFinite(p.p99Ms));
      if (curve.length === 0) return;
      const path = curve.map((p, j) => `${j === 0 ? 'M' : 'L'}${x2(p.deliveriesPerS).toFixed(1)},${y2(p.p99Ms).toFixed(1)}`).join(' ');
      parts.push(`<path d="${path}" fill="none" stroke="${COLORS[server]}" stroke-width="2"/>`);
      for (const p of curve) {
        const fill = p.sustained < p.reached ? '#fff' : COLORS[server];
        parts.push(`<circle cx="${x2(p.deliveriesPerS).toFixed(1)}" cy="${y2(p.p99Ms).toFixed(1)}" r="3.5" fill="${fill}" stroke="${COLORS[server]}" stroke-width="1.5"/>`);
      }
      legend(p2.x + i * 100, p2.y + p2.h + 56, server);
    });
    parts.push(`<text x="${p2.x}" y="${p2.y + p2.h + 74}" fill="#495057" font-size="11">hollow: a step not sustained (loss, p99 or rate)</text>`);
  } else {
    parts.push(`<text x="${p2.x}" y="${p2.y + 20}">(not run)</text>`);
  }
  parts.push(
    `<text x="${width - 8}" y="${height - 8}" text-anchor="end" fill="#868e96" font-size="10">${esc(`${results.meta.command} · ${results.meta.date.slice(0, 10)} · ${results.meta.machine.cpus} cores · Node ${results.meta.machine.node}`)}</text>`,
  );
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}

/** Replaces the text between `<!-- name:start -->` and `<!-- name:end -->`. */
export function replaceSection(doc: string, name: string, body: string): string {
  const start = `<!-- ${name}:start -->`;
  const end = `<!-- ${name}:end -->`;
  const from = doc.indexOf(start);
  const to = doc.indexOf(end);
  if (from === -1 || to === -1 || to < from) return `${doc.trimEnd()}\n\n${start}\n${body}\n${end}\n`;
  return `${doc.slice(0, from + start.length)}\n${body}\n${doc.slice(to)}`;
}

export type { ProfileSummary };
