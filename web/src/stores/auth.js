// Who is logged in. The token lives in memory and in this tab's sessionStorage (so a reload keeps the session
// but another tab or a closed browser does not), and is sent as `Authorization: Bearer`, never as a cookie.
import { defineStore } from 'pinia'
import { api } from '../api'

const KEY = 'balsam.token'

function stored() {
  try {
    return sessionStorage.getItem(KEY) || ''
  } catch (e) {
    return ''
  }
}

export const useAuth = defineStore('auth', {
  state: () => ({ token: stored(), whoami: null, message: '' }),
  getters: {
    loggedIn: (s) => !!s.token && !!s.whoami,
  },
  actions: {
    /** Log in with a token. At `balsam ui`, the link's one-time token (or BALSAM_UI_TOKEN's) is first exchanged
     * for a session token, and only that is kept; elsewhere (no such exchange) the token is used as it is. */
    async loginWithToken(token) {
      token = (token || '').trim()
      if (!token) throw new Error('Paste the token printed by `balsam ui`, or open its link.')
      try {
        const out = await api('POST', '/ui/session', { body: { token }, token: false })
        token = out.token
      } catch (e) {
        if (e.status !== 404) throw e
      }
      const who = await api('GET', '/whoami', { token })
      this.token = token
      this.whoami = who
      this.message = ''
      try {
        sessionStorage.setItem(KEY, token)
      } catch (e) {
        /* private mode: memory only */
      }
      return who
    },
    /** User name and password (at a relay): exchanged for a token, which is then used like any other. */
    async loginWithPassword(user, password) {
      const out = await api('POST', '/tokens', { body: { user, password }, token: false }).catch((e) => {
        if (e.status === 404 || e.status === 405) {
          throw new Error('This server takes tokens only: use the link or token that `balsam ui` printed.')
        }
        throw e
      })
      return this.loginWithToken(out.token)
    },
    /** Check a token kept from before this reload. */
    async restore() {
      if (!this.token || this.whoami) return !!this.whoami
      try {
        this.whoami = await api('GET', '/whoami', { token: this.token })
        return true
      } catch (e) {
        this.logout(e.status === 401 ? 'Your session ended: log in again.' : e.message)
        return false
      }
    },
    logout(message = '') {
      this.token = ''
      this.whoami = null
      this.message = message
      try {
        sessionStorage.removeItem(KEY)
      } catch (e) {
        /* nothing kept */
      }
    },
  },
})
