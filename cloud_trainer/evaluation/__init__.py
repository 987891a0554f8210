"""Trace-driven evaluation (SPEC §7, seed 002 §4): ``cloud-trainer evaluate``.

One or more videos are replayed back to back as one stream under a virtual clock, through the
real code paths: the device's ``Sampler`` and H.264 segments for the uplink, the trainer's
``Session`` (teacher, ASR/ATR, training phases, model mirror) or a baseline's own server logic,
the real update bodies for the downlink, and the real TFLite student patched by each update
and run through LiteRT, as the device would run it, from the virtual time its bytes arrive.

- ``names``, ``config``: scheme and preset names; settings and the two presets;
- ``stream``: the concatenated replay and its virtual time;
- ``clock``: when things arrive (FIFO links, a charged trainer);
- ``cache``: teacher and pretrained-student labels, computed once per frame content;
- ``device``: the device's model file, patched at arrival times;
- ``scoring``: per-frame IoU counts, mIoU over the stream's class subset;
- ``record``: what one scheme run produces, saved per scheme so runs merge;
- ``schemes``: No Customization, One-Time, Remote+Tracking, Just-In-Time, AMS;
- ``runner``: prepare pass, scheme runs, ablation; ``report``: JSON, Markdown, plots;
- ``command``: the ``evaluate`` sub-command.
"""
