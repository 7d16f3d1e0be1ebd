// Unit tests of the New job form's sweep helpers and the History view's series (run: npm test).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { jobFromRow, parseRows, range, typed, workdirFor } from '../src/sweep.js'
import { steps, throughput } from '../src/series.js'

test('typed values: JSON when it parses, else the text', () => {
  assert.equal(typed('3'), 3)
  assert.deepEqual(typed('[1, 2]'), [1, 2])
  assert.equal(typed('hello'), 'hello')
  assert.equal(typed('007'), '007')
})

test('a range includes its end and keeps the step decimals', () => {
  assert.deepEqual(range('0', '1', '0.25'), [0, 0.25, 0.5, 0.75, 1])
  assert.deepEqual(range(10, 4, -3), [10, 7, 4])
  assert.throws(() => range(0, 5, 0), /non-zero/)
  assert.throws(() => range(0, 5, -1), /towards stop/)
  assert.throws(() => range(0, 1e6, 1), /at most/)
})

test('workdirs of a sweep', () => {
  assert.equal(workdirFor('runs/a', 3, 0.5), 'runs/a/3')
  assert.equal(workdirFor('runs/t{value}', 3, 0.5), 'runs/t0.5')
})

test('CSV rows with quotes, typed cells; JSONL objects only', () => {
  assert.deepEqual(parseRows('r.csv', 'x,name\n1,"a, ""b"""\n'), [{ x: 1, name: 'a, "b"' }])
  assert.throws(() => parseRows('r.csv', 'x,y\n1\n'), /line 2/)
  assert.deepEqual(parseRows('r.jsonl', '{"x": 1}\n\n{"x": 2}\n'), [{ x: 1 }, { x: 2 }])
  assert.throws(() => parseRows('r.jsonl', '[1]\n'), /not a JSON object/)
})

test('a row sets job fields by name and parameters otherwise', () => {
  const base = { app_id: 1, workdir: 'w', parameters: { a: 1 }, tags: { t: 'x' }, num_nodes: 1 }
  const job = jobFromRow(base, { b: 2, num_nodes: 4, tags: { u: 'y' } }, 5, 'w')
  assert.deepEqual(job.parameters, { a: 1, b: 2 })
  assert.deepEqual(job.tags, { t: 'x', u: 'y' })
  assert.equal(job.num_nodes, 4)
  assert.equal(job.workdir, 'w/5')
  assert.deepEqual(base.parameters, { a: 1 }) // the form's values are not changed
})

test('throughput bins finished jobs; steps never go below zero', () => {
  const t = (s) => new Date(s * 1000).toISOString()
  const [xs, ys] = throughput([{ to_state: 'JOB_FINISHED', timestamp: t(65) }, { to_state: 'RUNNING', timestamp: t(70) }], 0, 180, 60)
  assert.deepEqual(xs, [0, 60, 120, 180])
  assert.deepEqual(ys, [0, 1, 0, 0])
  assert.deepEqual(steps([[10, 2], [20, -3], [30, 1]], 0, 40), [[0, 10, 20, 30, 40], [0, 2, 0, 1, 1]])
})
