// Loading what the History and BatchJob views plot (the series themselves are in series.js).
import { get, getAll } from './api'

export { available, bins, busy, steps, throughput } from './series.js'

/** The events that move jobs into or out of RUNNING, or to JOB_FINISHED, in a time window. */
export async function loadEvents(params, maxRows = 50000) {
  const [run, left, fin] = await Promise.all([
    getAll('/events', { ...params, to_state: 'RUNNING' }, maxRows),
    getAll('/events', { ...params, from_state: 'RUNNING' }, maxRows),
    getAll('/events', { ...params, to_state: 'JOB_FINISHED' }, maxRows),
  ])
  return { events: [...run.rows, ...left.rows, ...fin.rows], truncated: run.truncated || left.truncated || fin.truncated }
}

/** Jobs by id (for their footprints), fetched in chunks. */
export async function jobsById(ids) {
  const out = {}
  const unique = [...new Set(ids)]
  for (let i = 0; i < unique.length; i += 200) {
    const chunk = unique.slice(i, i + 200)
    const page = await get('/jobs', { id: chunk, limit: chunk.length })
    for (const j of page.results) out[j.id] = j
  }
  return out
}
