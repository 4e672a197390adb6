"""The static HTML report (:mod:`~pipeline.report.build`), its page pieces
(:mod:`~pipeline.report.html`), plots (:mod:`~pipeline.report.plots`) and assets
(:mod:`~pipeline.report.assets`)."""
