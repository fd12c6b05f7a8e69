"""Which brokers the platform can talk to: broker code -> adapter, imported lazily.

``BrokerAccount.broker`` takes its choices from here, and the account form asks each
broker which credentials it needs. Nothing outside ``brokers/`` imports an adapter
module; it asks ``get(code)``.
"""

from dataclasses import dataclass, field
from importlib import import_module


@dataclass(frozen=True)
class CredentialField:
    name: str
    label: str
    help_text: str = ""


@dataclass(frozen=True)
class BrokerSpec:
    code: str
    label: str
    adapter_path: str
    credential_fields: tuple[CredentialField, ...] = field(default_factory=tuple)


BROKERS: dict[str, BrokerSpec] = {
    spec.code: spec
    for spec in (
        BrokerSpec(
            code="paper",
            label="Paper exchange",
            adapter_path="brokers.paper.adapter.PaperBroker",
        ),
        BrokerSpec(
            code="kite",
            label="Zerodha Kite Connect",
            adapter_path="brokers.kite.adapter.KiteBroker",
            credential_fields=(
                CredentialField("api_key", "API key", "From the Kite developer console."),
                CredentialField("api_secret", "API secret", "Stored encrypted; never shown again."),
            ),
        ),
    )
}


def choices() -> list[tuple[str, str]]:
    return [(spec.code, spec.label) for spec in BROKERS.values()]


def spec(code: str) -> BrokerSpec:
    try:
        return BROKERS[code]
    except KeyError:
        raise LookupError(f"unknown broker {code!r}") from None


def all_credential_fields() -> list[CredentialField]:
    seen: dict[str, CredentialField] = {}
    for broker in BROKERS.values():
        for credential in broker.credential_fields:
            seen.setdefault(credential.name, credential)
    return list(seen.values())


def get(code: str):
    """The adapter class for a broker code, imported on first use."""
    module_path, _, class_name = spec(code).adapter_path.rpartition(".")
    return getattr(import_module(module_path), class_name)
