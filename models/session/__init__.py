"""Session-based next-item models: what a visitor is likely to look at next, from this visit.

Each model is one module behind :class:`~models.session.base.SessionModel` (fit on ordered
training sessions, score a batch of session prefixes over the whole catalogue), so the served
pipeline's session sources, the peers of ``recsys evaluate --task next-item`` and the tests all
use one implementation per algorithm.
"""
