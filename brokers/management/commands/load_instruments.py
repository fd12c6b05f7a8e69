from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from brokers import registry, services
from brokers.kite.adapter import parse_instruments_csv


class Command(BaseCommand):
    help = "Load instruments from a broker's instrument dump (Kite's CSV format), from a file or from the broker."

    def add_arguments(self, parser):
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--file", type=Path, help="a CSV in Kite's instrument format")
        source.add_argument("--broker", choices=list(registry.BROKERS), help="ask this broker for its instruments")
        parser.add_argument("--exchange", help="only this exchange")

    def handle(self, *args, file=None, broker=None, exchange=None, **options):
        if file is not None:
            try:
                rows = parse_instruments_csv(file.read_text())
            except (OSError, KeyError, ValueError) as exc:
                raise CommandError(f"{file}: not a Kite instrument CSV ({exc})") from exc
            if exchange:
                rows = [row for row in rows if row.exchange == exchange]
        else:
            try:
                rows = registry.get(broker)(client_id="").instruments(exchange)
            except ValueError as exc:
                raise CommandError(f"{broker}: its instrument dump could not be read ({exc})") from exc
        created, updated = services.instruments_load(rows)
        self.stdout.write(f"Instruments: {created} created, {updated} updated.")
