"""Django support, as Celery's: `DjangoTask` (`delay_on_commit`), and the fix-up an app installs when
DJANGO_SETTINGS_MODULE is set (`fixup`). See docs/django.md."""
