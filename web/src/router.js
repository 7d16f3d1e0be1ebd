// Hash history: every URL is `/#/...`, so the server only ever serves `/` and `/assets/...`, and a token in
// a one-time link (`/#/login?token=...`) is never sent to the server or written to its logs.
import { createRouter, createWebHashHistory } from 'vue-router'
import { useAuth } from './stores/auth'
import LoginView from './views/LoginView.vue'

const routes = [
  { path: '/', redirect: '/sites' },
  { path: '/login', name: 'login', component: LoginView, meta: { public: true, title: 'Log in' } },
  { path: '/sites', name: 'sites', component: () => import('./views/SitesView.vue'), meta: { title: 'Sites' } },
  { path: '/apps', name: 'apps', component: () => import('./views/AppsView.vue'), meta: { title: 'Apps' } },
  { path: '/batch-jobs', name: 'batch-jobs', component: () => import('./views/BatchJobsView.vue'), meta: { title: 'BatchJobs' } },
  { path: '/batch-jobs/:id', name: 'batch-job', component: () => import('./views/BatchJobView.vue'), meta: { title: 'BatchJob' } },
  { path: '/jobs', name: 'jobs', component: () => import('./views/JobsView.vue'), meta: { title: 'Jobs' } },
  { path: '/jobs/new', name: 'new-job', component: () => import('./views/NewJobView.vue'), meta: { title: 'New job' } },
  { path: '/jobs/:id', name: 'job', component: () => import('./views/JobView.vue'), meta: { title: 'Job' } },
  { path: '/transfers', name: 'transfers', component: () => import('./views/TransfersView.vue'), meta: { title: 'Transfers' } },
  { path: '/dags', name: 'dags', component: () => import('./views/DagsView.vue'), meta: { title: 'DAGs' } },
  { path: '/history', name: 'history', component: () => import('./views/HistoryView.vue'), meta: { title: 'History' } },
  { path: '/:rest(.*)*', redirect: '/sites' },
]

const router = createRouter({ history: createWebHashHistory(), routes })

router.beforeEach(async (to) => {
  if (to.meta.public) return true
  const auth = useAuth()
  if (auth.loggedIn || (await auth.restore())) return true
  return { name: 'login', query: to.fullPath !== '/sites' ? { next: to.fullPath } : {} }
})

router.afterEach((to) => {
  document.title = `${to.meta.title || 'Balsam'} · Balsam`
})

export default router
