"""Integrations with other frameworks (Celery's `celery.contrib` names): `minique.contrib.django`."""
