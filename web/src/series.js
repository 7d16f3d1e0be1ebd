// Time series computed from the EventLog and BatchJobs: throughput (jobs finished per bin), nodes busy
// (the footprint of RUNNING jobs) and nodes available (running BatchJobs' nodes). Pure functions.
import { footprint } from './util.js'

const sec = (t) => new Date(t).getTime() / 1000

/** Bin edges from start to end (unix seconds). */
export function bins(start, end, step) {
  const xs = []
  for (let t = Math.floor(start / step) * step; t <= end; t += step) xs.push(t)
  return xs
}

/** Jobs finished per bin: [xs, counts]. */
export function throughput(events, start, end, step) {
  const xs = bins(start, end, step)
  const ys = xs.map(() => 0)
  const first = xs[0]
  for (const e of events) {
    if (e.to_state !== 'JOB_FINISHED') continue
    const i = Math.floor((sec(e.timestamp) - first) / step)
    if (i >= 0 && i < ys.length) ys[i] += 1
  }
  return [xs, ys]
}

/** A step function from (time, delta) pairs, sampled at its own change points: [xs, ys]. */
export function steps(deltas, start, end) {
  deltas.sort((a, b) => a[0] - b[0])
  const xs = [start]
  const ys = [0]
  let level = 0
  for (const [t, d] of deltas) {
    level = Math.max(0, level + d)
    const x = Math.min(Math.max(t, start), end)
    if (x === xs[xs.length - 1]) ys[ys.length - 1] = level
    else {
      xs.push(x)
      ys.push(level)
    }
  }
  if (xs[xs.length - 1] < end) {
    xs.push(end)
    ys.push(level)
  }
  return [xs, ys.map((y) => Math.round(y * 1000) / 1000)]
}

/** Nodes busy: each job counts its footprint from entering RUNNING until it leaves it. */
export function busy(events, jobsById, start, end) {
  const deltas = []
  for (const e of events) {
    const f = footprint(jobsById[e.job_id])
    if (e.to_state === 'RUNNING') deltas.push([sec(e.timestamp), f])
    else if (e.from_state === 'RUNNING') deltas.push([sec(e.timestamp), -f])
  }
  return steps(deltas, start, end)
}

/** Nodes available: each BatchJob's nodes from its start until its end (or now). */
export function available(batchJobs, start, end) {
  const deltas = []
  for (const b of batchJobs) {
    if (!b.start_time) continue
    deltas.push([sec(b.start_time), b.num_nodes])
    const stop = b.end_time ? sec(b.end_time) : null
    if (stop !== null) deltas.push([stop, -b.num_nodes])
  }
  return steps(deltas, start, end)
}
