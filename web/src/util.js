// Small shared helpers: state names and colours, time formatting, tags.

export const JOB_STATES = [
  'AWAITING_PARENTS', 'READY', 'STAGED_IN', 'PREPROCESSED', 'RUNNING', 'RUN_DONE', 'RUN_ERROR', 'RUN_TIMEOUT',
  'RESTART_READY', 'POSTPROCESSED', 'STAGED_OUT', 'JOB_FINISHED', 'FAILED', 'USER_KILLED',
]
export const BATCH_JOB_STATES = ['pending_submission', 'queued', 'running', 'finished', 'submit_failed', 'pending_deletion']

const COLORS = {
  JOB_FINISHED: 'success', FAILED: 'error', USER_KILLED: 'error', RUN_ERROR: 'error', RUN_TIMEOUT: 'warning',
  RUNNING: 'info', RUN_DONE: 'info', POSTPROCESSED: 'info', PREPROCESSED: 'primary', RESTART_READY: 'primary',
  running: 'info', finished: 'success', submit_failed: 'error', queued: 'primary',
}
export const stateColor = (s) => COLORS[s] || 'secondary'

/** A Date from an ISO string or epoch seconds. */
export const toDate = (t) => new Date(typeof t === 'number' ? t * 1000 : t)

export function fmtTime(t) {
  if (!t) return '—'
  const d = toDate(t)
  if (Number.isNaN(d.getTime())) return String(t)
  return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z').replace(/Z$/, ' UTC')
}

export function ago(t) {
  if (!t) return 'never'
  const s = Math.round((Date.now() - toDate(t).getTime()) / 1000)
  if (s < 0) return 'just now'
  if (s < 60) return `${s}s ago`
  if (s < 3600) return `${Math.floor(s / 60)}m ago`
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`
  return `${Math.floor(s / 86400)}d ago`
}

export const fmtTags = (tags) => Object.entries(tags || {}).map(([k, v]) => `${k}=${v}`).join(' ')

/** "a=1, b=2" or "a:1 b:2" -> ["a:1", "b:2"] (the API's tags=key:value filter). */
export function parseTagFilter(text) {
  return (text || '')
    .split(/[\s,]+/)
    .filter(Boolean)
    .map((t) => t.replace('=', ':'))
    .filter((t) => t.includes(':'))
}

/** "a=1\nb=2" -> {a: "1", b: "2"}; throws on a line without '='. */
export function parseTags(text) {
  const out = {}
  for (const raw of (text || '').split(/[\n,]+/)) {
    const line = raw.trim()
    if (!line) continue
    const i = line.indexOf('=')
    if (i <= 0) throw new Error(`"${line}" is not key=value`)
    out[line.slice(0, i).trim()] = line.slice(i + 1).trim()
  }
  return out
}

/** Nodes a job occupies while it runs. */
export const footprint = (job) => (job ? (job.num_nodes || 1) / Math.max(1, job.node_packing_count || 1) : 1)

/** A date for an <input type="datetime-local"> from a Date (UTC shown as local-free text). */
export function toInputValue(d) {
  return d.toISOString().slice(0, 16)
}
export function fromInputValue(s) {
  return s ? new Date(`${s}:00Z`).toISOString() : ''
}
