import secrets

from django.conf import settings
from django.core.management.base import BaseCommand

from accounts import services
from accounts.models import BrokerAccount, User
from brokers.services import session_live


class Command(BaseCommand):
    help = "Create (once) a demo trader with a connected paper broker account, and print the login."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="demo")

    def handle(self, *args, username, **options):
        password_file = settings.VAR_DIR / "demo_login.txt"
        user = User.objects.filter(username=username).first()
        if user is None or not password_file.exists():
            password = secrets.token_urlsafe(9)
            if user is None:
                user = User.objects.create_user(username=username, password=password)
            else:
                user.set_password(password)
                user.save(update_fields=["password"])
            password_file.touch(mode=0o600)
            password_file.write_text(password)
        password = password_file.read_text().strip()
        account = BrokerAccount.objects.filter(owner=user, broker="paper").first()
        if account is None:
            account = services.broker_account_create(
                owner=user, broker="paper", client_id=f"PAPER-{username.upper()}", label="Paper", credentials={}
            )
        # Connected from the start: a paper login is immediate.
        session_live(account)
        self.stdout.write(f"Demo trader: username {username!s}, password {password}")
