// Live changes from the server's WebSocket (/v1/ws): job and BatchJob state changes, per-site counts, and a
// "sites" message when the set of sites changes (a site created while `balsam ui` runs).
// Views read `jobStates` for rows they show and watch `version` to refetch what they list; the socket
// reconnects on its own (with backoff) after a server restart, and `reconnects` tells views to catch up.
import { defineStore } from 'pinia'
import { useAuth } from './auth'

let socket = null
let timer = null

export const useLive = defineStore('live', {
  state: () => ({
    connected: false,
    version: 0,
    reconnects: 0,
    jobStates: {},
    batchJobStates: {},
    counts: {},
    sitesVersion: 0,
    lastMessageAt: null,
  }),
  actions: {
    start() {
      if (socket || timer) return
      this.connect(0)
    },
    connect(attempt) {
      timer = null
      const auth = useAuth()
      if (!auth.token) return
      const proto = location.protocol === 'https:' ? 'wss:' : 'ws:'
      const ws = new WebSocket(`${proto}//${location.host}/v1/ws?token=${encodeURIComponent(auth.token)}`)
      socket = ws
      let opened = false
      ws.onopen = () => {
        opened = true
        this.connected = true
        if (attempt > 0) this.reconnects += 1
        this.version += 1
      }
      ws.onmessage = (ev) => {
        let msg
        try {
          msg = JSON.parse(ev.data)
        } catch (e) {
          return
        }
        this.apply(Array.isArray(msg) ? msg : [msg])
      }
      ws.onclose = () => {
        if (socket === ws) socket = null
        this.connected = false
        if (!useAuth().token) return
        const next = opened ? 1 : attempt + 1
        const delay = Math.min(5000, 250 * 2 ** Math.min(next, 5))
        timer = setTimeout(() => this.connect(next), delay)
      }
    },
    apply(messages) {
      let changed = false
      for (const m of messages) {
        if (!m || typeof m !== 'object') continue
        if (m.type === 'job' && m.id != null) {
          this.jobStates[m.id] = m.state
          changed = true
        } else if (m.type === 'batch_job' && m.id != null) {
          this.batchJobStates[m.id] = m.state
          changed = true
        } else if (m.type === 'sites') {
          this.sitesVersion += 1
          changed = true
        } else if (m.type === 'counts' && m.site_id != null) {
          this.counts[m.site_id] = m.counts || m.backlog || {}
          changed = true
        }
      }
      if (changed) {
        this.lastMessageAt = new Date()
        this.version += 1
      }
    },
    stop() {
      if (timer) clearTimeout(timer)
      timer = null
      const ws = socket
      socket = null
      if (ws) ws.close()
      this.connected = false
    },
  },
})
