#!/bin/bash
# Balsam batch job for Summit (OLCF; retired Nov 2024).
# bsub runs this as `/bin/bash <script>` on a batch node, so these #BSUB lines are documentation only.
# Rendered by the site agent (balsam.platforms.templates): balsam, site_path, batch_job_id, job_mode,
# wall_time_min, num_nodes, project, queue, filter_tags, partitions, optional_params.
# The submit command also passes nodes, wall time, project, queue and optional params on its command line
# (which take precedence); the directives below keep the script self-describing.
#BSUB -J balsam-{{ batch_job_id }}
#BSUB -nnodes {{ num_nodes }}
#BSUB -W {{ wall_time_min }}
{% if project %}#BSUB -P {{ project | directive }}
{% endif %}{% if queue %}#BSUB -q {{ queue | directive }}
{% endif %}{% for k, v in optional_params.items() %}#BSUB -{{ k | directive }} "{{ v | directive }}"
{% endfor %}
export BALSAM_SITE_PATH={{ site_path | shquote }}
cd "$BALSAM_SITE_PATH"
exec {{ balsam }} launcher --batch-job-id {{ batch_job_id }} -j {{ job_mode }} -t {{ wall_time_min }}
{%- for k, v in filter_tags.items() %} --tag {{ (k ~ "=" ~ v) | shquote }}{% endfor %}
{%- for p in partitions %} -p {{ p | shquote }}{% endfor %}
