"""The run report's layout: the HTML of :mod:`catalogfs.jobs.run_report` as :class:`string.Template`
markup, filled by ``run_report.render_report`` from the values ``run_report.report_values`` returns.

No logic lives here. Every ``$value`` is HTML-escaped before it goes in, except the ones named
``*_html``, which are other templates of this module already filled. A part a report may lack (the
Data Docs link, the sections of a space with videos, the note of the current space) is its own
template, filled or left out by ``render_report``.
"""

from __future__ import annotations

from string import Template

STYLE = ("body{font-family:sans-serif;margin:2em} td,th{padding:2px 12px;border-bottom:1px solid #ddd;"
         "text-align:left} img{max-width:100%;border:1px solid #ccc} pre{background:#f6f6f6;padding:8px}")
STYLE_UNCHANGED = "body{font-family:sans-serif;margin:2em} td{padding:2px 12px;border-bottom:1px solid #ddd}"

PAGE = Template("<!doctype html><html><head><meta charset='utf-8'><title>catalogfs run report</title>"
                "<style>$style_html</style></head><body>$body_html</body></html>")

# A two-column table (run facts, statuses): KV_TABLE around one KV_ROW per key.
KV_TABLE = Template("<table>$rows_html</table>")
KV_ROW = Template("<tr><td>$key</td><td>$value</td></tr>")

# The run, its validation and the top labels: in every report of a run that changed its space.
RUN = Template("""\
<h1>catalogfs embed run $run_id</h1>
$run_table_html
<h2>Frame statuses in this space</h2>
$space_statuses_html
<h2>This run's frames by status</h2>
$run_statuses_html
<h2>Validation</h2>
<p>$validation$data_docs_html</p>
<h2>Videos by top label</h2>
<p>$total videos in this space, $labelled with a top label, $distinct distinct top labels; \
the $n_top with the most videos:</p>
<table id="top-labels"><tr><th>top label</th><th>videos</th></tr>$top_label_rows_html\
<tr><td>$other (other labels, no label)</td><td>$rest</td></tr></table>""")
DATA_DOCS = Template(' — <a href="$href">Data Docs</a>')
TOP_LABEL_ROW = Template("<tr><td>$label</td><td>$videos</td></tr>")

# A space with videos: the projection, the contact sheet and the first videos.
SPACE = Template("""\
<h2>Video embeddings in 2-D</h2>
<p id="projection-sample">$sampled; principal components of that sample. Colour: the \
$n_top most frequent top labels; the other videos grey.</p>
<img src="projection.png" alt="Video embeddings in 2-D">
<h2>Sample frames per top label</h2>
<p id="contact-sheet">Up to $frames_per_label ok frames for each of the $sheet_labels most frequent \
top labels (of $distinct), from up to $frames_per_label videos per label chosen by hash of video_id: \
$sheet_counts.</p>
<img src="contact_sheet.png" alt="Sample frames per top label">
<h2>Videos</h2>
<p id="video-table">The first $table_rows of $total videos by video_id. To list them all:</p>
<pre>$list_query</pre>
<table><tr><th>video_id</th><th>top label</th><th>ok frames</th></tr>$video_rows_html</table>\
$current_html""")
SAMPLED_ALL = Template("Projection of all $total videos")
SAMPLED_SOME = Template("Projection of $sample of $total videos, chosen by hash of video_id "
                        "(the $sample smallest xxhash64(video_id); the same videos on every run)")
SHEET_COUNT = Template("$label ($frames)")
VIDEO_ROW = Template("<tr><td>$video_id</td><td>$label</td><td>$frames</td></tr>")
CURRENT = Template("\n<p>This space is the current one: the <code>$view</code> view (and the other "
                   "<code>current_*</code> views) select its rows.</p>")
NO_VIDEOS = "<p>No videos in this space yet.</p>"

# A run that found nothing to do: its facts only.
UNCHANGED = Template("<h1>catalogfs embed run $run_id</h1>$run_table_html"
                     "<p>Nothing new to embed or refresh: the space did not change in this run, so no "
                     "projection or contact sheet was drawn (the report of the space's last publishing run "
                     "shows it).</p>")
