// Builds the dashboard into the Python package (balsam/web/), which is committed: `npm ci && npm run build`
// must give the same bytes every time (CI checks `git diff --exit-code balsam/web`).
import { fileURLToPath, URL } from 'node:url'
import { defineConfig } from 'vite'
import vue from '@vitejs/plugin-vue'
import vuetify from 'vite-plugin-vuetify'

export default defineConfig({
  base: '/',
  plugins: [vue(), vuetify({ autoImport: true })],
  resolve: { alias: { '@': fileURLToPath(new URL('./src', import.meta.url)) } },
  build: {
    outDir: fileURLToPath(new URL('../balsam/web', import.meta.url)),
    emptyOutDir: true,
    assetsDir: 'assets',
    sourcemap: false,
    reportCompressedSize: true,
    chunkSizeWarningLimit: 600,
  },
  server: {
    // `npm run dev` talks to a running `balsam ui` (BALSAM_UI=http://127.0.0.1:PORT)
    proxy: process.env.BALSAM_UI ? { '/v1': { target: process.env.BALSAM_UI, ws: true } } : undefined,
  },
})
