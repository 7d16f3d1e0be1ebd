// Turning the New job form into job-create bodies: one job, a parameter range, or rows of a JSONL/CSV file.

/** A typed value from a form field: JSON when it parses (numbers, lists, true), else the text itself. */
export function typed(text) {
  if (typeof text !== 'string') return text
  const t = text.trim()
  if (t === '') return ''
  try {
    return JSON.parse(t)
  } catch (e) {
    return text
  }
}

/** Values start, start+step, ... up to stop (inclusive), at most `cap` of them. */
export function range(start, stop, step, cap = 100000) {
  const a = Number(start)
  const b = Number(stop)
  const s = Number(step)
  if (![a, b, s].every(Number.isFinite)) throw new Error('start, stop and step must be numbers')
  if (s === 0 || (b - a) / s < 0) throw new Error('step must be non-zero and go from start towards stop')
  const n = Math.floor((b - a) / s + 1e-9) + 1
  if (n > cap) throw new Error(`that is ${n} jobs; at most ${cap} at once`)
  const digits = Math.max(0, ...[start, step].map((x) => (String(x).split('.')[1] || '').length))
  return Array.from({ length: n }, (_, i) => Number((a + i * s).toFixed(digits)))
}

/** A workdir from a template: {i} is the row number, {value} the swept value; without either, "/{i}" is added. */
export function workdirFor(template, i, value) {
  const t = template.includes('{i}') || template.includes('{value}') ? template : `${template.replace(/\/+$/, '')}/{i}`
  return t.replaceAll('{i}', String(i)).replaceAll('{value}', String(value ?? i))
}

/** Split one CSV line (quotes with "" escapes). */
function csvLine(line) {
  const out = []
  let cur = ''
  let quoted = false
  for (let i = 0; i < line.length; i++) {
    const c = line[i]
    if (quoted) {
      if (c === '"' && line[i + 1] === '"') {
        cur += '"'
        i++
      } else if (c === '"') quoted = false
      else cur += c
    } else if (c === '"') quoted = true
    else if (c === ',') {
      out.push(cur)
      cur = ''
    } else cur += c
  }
  out.push(cur)
  return out
}

/** Rows of a JSONL or CSV file: a list of objects (CSV cells typed like form fields). */
export function parseRows(name, text) {
  const lines = text.split(/\r?\n/).filter((l) => l.trim())
  if (/\.csv$/i.test(name)) {
    if (lines.length < 2) throw new Error('the CSV file needs a header row and at least one row')
    const head = csvLine(lines[0]).map((h) => h.trim())
    return lines.slice(1).map((l, n) => {
      const cells = csvLine(l)
      if (cells.length !== head.length) throw new Error(`line ${n + 2}: ${cells.length} cells, the header has ${head.length}`)
      return Object.fromEntries(head.map((h, i) => [h, typed(cells[i])]))
    })
  }
  return lines.map((l, n) => {
    let row
    try {
      row = JSON.parse(l)
    } catch (e) {
      throw new Error(`line ${n + 1} is not JSON`)
    }
    if (!row || typeof row !== 'object' || Array.isArray(row)) throw new Error(`line ${n + 1} is not a JSON object`)
    return row
  })
}

const JOB_KEYS = new Set(['workdir', 'tags', 'num_nodes', 'ranks_per_node', 'threads_per_rank', 'threads_per_core', 'gpus_per_rank',
  'node_packing_count', 'wall_time_min', 'launch_params', 'parent_ids', 'data'])

/** A job body from a file row: keys named like job fields set those, `parameters` or any other key sets parameters. */
export function jobFromRow(base, row, i, template) {
  const job = { ...base, parameters: { ...base.parameters }, tags: { ...base.tags } }
  for (const [k, v] of Object.entries(row)) {
    if (k === 'parameters' && v && typeof v === 'object') Object.assign(job.parameters, v)
    else if (k === 'tags' && v && typeof v === 'object') Object.assign(job.tags, v)
    else if (JOB_KEYS.has(k)) job[k] = v
    else job.parameters[k] = v
  }
  if (!row.workdir) job.workdir = workdirFor(template, i, i)
  return job
}
