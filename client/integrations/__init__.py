"""Integrations of ecsnap with training frameworks, each an optional extra that ecsnap's core
never imports: `ecsnap.integrations.huggingface` (`pip install 'ecsnap[huggingface]'`) and
`ecsnap.integrations.lightning` (`pip install 'ecsnap[lightning]'`)."""
