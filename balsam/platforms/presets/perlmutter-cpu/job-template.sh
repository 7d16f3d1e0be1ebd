#!/bin/bash
# Balsam batch job for Perlmutter CPU (NERSC).
# Rendered by the site agent (balsam.platforms.templates): balsam, site_path, batch_job_id, job_mode,
# wall_time_min, num_nodes, project, queue, filter_tags, partitions, optional_params.
# The submit command also passes nodes, wall time, project, queue and optional params on its command line
# (which take precedence); the directives below keep the script self-describing.
#SBATCH --job-name=balsam-{{ batch_job_id }}
#SBATCH --nodes={{ num_nodes }}
#SBATCH --time={{ wall_time_min }}
{% if project %}#SBATCH --account={{ project | directive }}
{% endif %}{% if queue %}#SBATCH --qos={{ queue | directive }}
{% endif %}{% for k, v in optional_params.items() %}#SBATCH --{{ k | replace("_", "-") | directive }}={{ v | directive }}
{% endfor %}
export BALSAM_SITE_PATH={{ site_path | shquote }}
cd "$BALSAM_SITE_PATH"
exec {{ balsam }} launcher --batch-job-id {{ batch_job_id }} -j {{ job_mode }} -t {{ wall_time_min }}
{%- for k, v in filter_tags.items() %} --tag {{ (k ~ "=" ~ v) | shquote }}{% endfor %}
{%- for p in partitions %} -p {{ p | shquote }}{% endfor %}
