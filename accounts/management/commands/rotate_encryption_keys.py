from django.core.management.base import BaseCommand, CommandError

from accounts import services
from accounts.crypto import DecryptionError


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored secret with the first key in FIELD_ENCRYPTION_KEYS. "
        "To rotate: put the new key first (keep the old ones after it), restart, run this, "
        "then drop the old keys."
    )

    def handle(self, *args, **options):
        try:
            counts = services.encryption_keys_rotate()
        except DecryptionError as exc:
            raise CommandError(f"{exc}; keep the old key in FIELD_ENCRYPTION_KEYS until rotation finishes") from exc
        for field, count in counts.items():
            self.stdout.write(f"{field}: re-encrypted {count}")
        self.stdout.write(self.style.SUCCESS("All secrets now use the primary key."))
