#!/bin/bash
# Balsam batch job for Cooley (ALCF; retired Dec 2023).
# Cobalt runs this on the allocation's first node.
# Rendered by the site agent (balsam.platforms.templates): balsam, site_path, batch_job_id, job_mode,
# wall_time_min, num_nodes, project, queue, filter_tags, partitions, optional_params.
# The submit command also passes nodes, wall time, project, queue and optional params on its command line
# (which take precedence); the directives below keep the script self-describing.
#COBALT -n {{ num_nodes }}
#COBALT -t {{ wall_time_min }}
{% if project %}#COBALT -A {{ project | directive }}
{% endif %}{% if queue %}#COBALT -q {{ queue | directive }}
{% endif %}{% if optional_params %}#COBALT --attrs {% for k, v in optional_params.items() %}{{ k | directive }}={{ v | directive }}{% if not loop.last %}:{% endif %}{% endfor %}
{% endif %}
export BALSAM_SITE_PATH={{ site_path | shquote }}
cd "$BALSAM_SITE_PATH"
exec {{ balsam }} launcher --batch-job-id {{ batch_job_id }} -j {{ job_mode }} -t {{ wall_time_min }}
{%- for k, v in filter_tags.items() %} --tag {{ (k ~ "=" ~ v) | shquote }}{% endfor %}
{%- for p in partitions %} -p {{ p | shquote }}{% endfor %}
