// The one door to the /v1 API of the server that served this page. The token goes in a header (never a
// cookie), so a page on another origin cannot make requests in the user's name (no CSRF).
import { useAuth } from './stores/auth'

/** An API error: the server's one-line message, its code and the field it concerns (or null). */
export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message)
    this.status = status
    this.code = code
    this.field = field || null
  }
}

/** Query string from an object; arrays repeat the key (state=A&state=B); empty values are left out. */
export function query(params) {
  const q = new URLSearchParams()
  for (const [k, v] of Object.entries(params || {})) {
    if (v === undefined || v === null || v === '') continue
    if (Array.isArray(v)) v.forEach((x) => q.append(k, String(x)))
    else q.append(k, String(v))
  }
  const s = q.toString()
  return s ? `?${s}` : ''
}

function newKey() {
  const b = new Uint8Array(16)
  crypto.getRandomValues(b)
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('')
}

/** Call the API; returns the parsed JSON body. A 401 logs out (the token is gone or wrong). */
export async function api(method, path, { params, body, token } = {}) {
  const auth = useAuth()
  const headers = { Accept: 'application/json' }
  const bearer = token === false ? '' : token || auth.token
  if (bearer) headers.Authorization = `Bearer ${bearer}`
  if (body !== undefined) headers['Content-Type'] = 'application/json'
  if (method !== 'GET') headers['Idempotency-Key'] = newKey()
  let resp
  try {
    resp = await fetch(`/v1${path}${query(params)}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit',
      cache: 'no-store',
    })
  } catch (e) {
    throw new ApiError(0, 'unreachable', 'the Balsam server does not answer (is `balsam ui` or the agent running?)', null)
  }
  const text = await resp.text()
  let data = null
  try {
    data = text ? JSON.parse(text) : null
  } catch (e) {
    data = null
  }
  if (!resp.ok) {
    const err = (data && data.error) || {}
    if (resp.status === 401 && token === undefined) auth.logout('Your session ended: log in again.')
    throw new ApiError(resp.status, err.code || 'error', err.message || `${resp.status} ${resp.statusText}`, err.field)
  }
  return data
}

export const get = (path, params) => api('GET', path, { params })

/** Every page of a cursor-paged listing, up to maxRows rows (returns {rows, truncated}). */
export async function getAll(path, params, maxRows = 20000, pageSize = 1000) {
  const rows = []
  let cursor = null
  for (;;) {
    const page = await get(path, { ...params, limit: pageSize, cursor })
    rows.push(...page.results)
    cursor = page.next_cursor
    if (!cursor) return { rows, truncated: false }
    if (rows.length >= maxRows) return { rows, truncated: true }
  }
}

/** The rows of a listing answer (a bare list, or a page with `results`). */
export const rowsOf = (d) => (Array.isArray(d) ? d : (d && d.results) || [])

let sitesCache = null
/** The sites this token sees (cached for the page's life; `fresh` reloads). */
export async function sitesList(fresh = false) {
  if (!sitesCache || fresh) sitesCache = rowsOf(await get('/sites'))
  return sitesCache
}
