#!/bin/bash
# Balsam batch job for the local preset: runs the launcher as a background process on this host.
# Rendered by the site agent with: balsam (the command that runs Balsam), site_path, batch_job_id,
# job_mode, wall_time_min, num_nodes, filter_tags (dict), partitions (list), optional_params (dict).
export BALSAM_SITE_PATH={{ site_path | shquote }}
cd "$BALSAM_SITE_PATH"
exec {{ balsam }} launcher --batch-job-id {{ batch_job_id }} -j {{ job_mode }} -t {{ wall_time_min }}
{%- for k, v in filter_tags.items() %} --tag {{ (k ~ "=" ~ v) | shquote }}{% endfor %}
{%- for p in partitions %} -p {{ p | shquote }}{% endfor %}
