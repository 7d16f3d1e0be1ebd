import { createApp } from 'vue'
import { createPinia } from 'pinia'
import { createVuetify } from 'vuetify'
import { aliases, mdi } from 'vuetify/iconsets/mdi-svg'
import 'vuetify/styles'
import App from './App.vue'
import router from './router'

// The page's content security policy allows an inline <style> only with this load's nonce (the server writes it
// into index.html): Vuetify's theme stylesheet carries it, and markup injected into the page could not.
const cspNonce = document.querySelector('meta[name="csp-nonce"]')?.getAttribute('content') || undefined

// Icons are inline SVG paths (@mdi/js) and the page uses the system's fonts: nothing comes from the network.
const vuetify = createVuetify({
  icons: { defaultSet: 'mdi', aliases, sets: { mdi } },
  theme: {
    cspNonce,
    defaultTheme: 'balsam',
    themes: {
      balsam: {
        dark: false,
        // Enough contrast for WCAG AA on secondary text (hints, subtitles, labels): axe-core checks it in CI.
        variables: { 'medium-emphasis-opacity': 0.74, 'high-emphasis-opacity': 0.9 },
        colors: { primary: '#1a5e9a', secondary: '#4a5b6c', success: '#1b7f3b', error: '#b3261e', warning: '#8a5a00', info: '#1565c0' },
      },
    },
  },
})

createApp(App).use(createPinia()).use(router).use(vuetify).mount('#app')
