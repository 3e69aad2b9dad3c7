"""Generate the demo input files in data/ (deterministic, stdlib only).

    python data/generate.py

Writes, next to this script:
  tickets.jsonl        300 support tickets (en ~60%, de/fr/es/nl)      -> classify / custom jobs
  comments.jsonl       200 user comments (~25% problematic, PG-13)      -> moderate job
  product_texts.jsonl  150 English UI / product strings with placeholders -> translate job

All randomness comes from one random.Random(2026), so re-running produces
byte-identical files. The tickets carry no label column on purpose.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

SEED = 2026
OUT_DIR = Path(__file__).resolve().parent

N_TICKETS = 300
N_COMMENTS = 200
N_PRODUCT_TEXTS = 150

rng = random.Random(SEED)


def pick(seq):  # type: ignore[no-untyped-def]
    return seq[rng.randrange(len(seq))]


# --------------------------------------------------------------------------------------
# Shared slot values
# --------------------------------------------------------------------------------------

COMPANY_STEMS = [
    "Acme",
    "Nordwind",
    "Bluepeak",
    "Kessler",
    "Lumen",
    "Vantaa",
    "Brightline",
    "Oakridge",
    "Hafen",
    "Soleil",
    "Marlow",
    "Rivera",
    "Delft",
    "Quantix",
    "Fernwood",
    "Alpenglow",
    "Corvid",
    "Meridian",
    "Tulip",
    "Bergmann",
    "Cobalt",
    "Sierra",
    "Pellier",
    "Zeeland",
    "Halcyon",
    "Granite",
    "Ostrava",
    "Lindqvist",
    "Mistral",
    "Ironbridge",
]
COMPANY_FORMS = {
    "en": ["Ltd", "Inc.", "LLC", "plc", "Group", "& Co."],
    "de": ["GmbH", "AG", "GmbH & Co. KG", "KG", "UG"],
    "fr": ["SARL", "SAS", "SA"],
    "es": ["S.L.", "S.A.", "SL"],
    "nl": ["B.V.", "N.V.", "VOF"],
}
CHANNELS = ["email", "chat", "phone", "web"]
CHANNEL_WEIGHTS = [40, 25, 10, 25]

EMOJIS = ["🙂", "😅", "🙏", "😡", "👍", "🤔", "😕", "🚀", "😤", "❤️"]


def company(lang: str) -> str:
    # Mostly home-market legal forms, sometimes a foreign one.
    form_lang = lang if rng.random() < 0.8 else pick(list(COMPANY_FORMS))
    return f"{pick(COMPANY_STEMS)} {pick(COMPANY_FORMS[form_lang])}"


def order_no() -> str:
    return f"#{rng.randint(10000, 99999)}"


def invoice_no() -> str:
    return f"INV-{rng.choice([2025, 2026])}-{rng.randint(1000, 9999)}"


def amount(lang: str) -> str:
    value = pick(
        [9.90, 19.00, 29.90, 49.90, 59.00, 79.00, 99.00, 119.00, 149.50, 249.00, 480.00, 1190.00]
    )
    euros, cents = f"{value:.2f}".split(".")
    if lang == "en":
        return pick([f"€{value:.2f}", f"EUR {value:.2f}", f"${value:.2f}", f"£{value:.2f}"])
    if lang == "nl":
        return f"€ {euros},{cents}"
    return f"{euros},{cents} €" if rng.random() < 0.7 else f"{euros},{cents} EUR"


def error_code() -> str:
    return pick(
        [
            "E1042",
            "ERR_EXPORT_500",
            "0x80070005",
            "E-403",
            "SYNC_TIMEOUT",
            "E2210",
            "HTTP 502",
            "ERR_QUOTA_EXCEEDED",
        ]
    )


def version() -> str:
    return f"{rng.randint(3, 5)}.{rng.randint(0, 12)}.{rng.randint(0, 9)}"


def count_n() -> str:
    return str(pick([2, 3, 3, 4, 5, 12, 40, 150, 2000, 12000]))


def date_str(lang: str) -> str:
    d, m = rng.randint(1, 28), rng.randint(1, 12)
    if lang == "en":
        months = [
            "Jan",
            "Feb",
            "Mar",
            "Apr",
            "May",
            "Jun",
            "Jul",
            "Aug",
            "Sep",
            "Oct",
            "Nov",
            "Dec",
        ]
        return f"{months[m - 1]} {d}"
    return f"{d:02d}.{m:02d}." if lang in ("de", "nl") else f"{d:02d}/{m:02d}"


def person() -> str:
    return pick(
        [
            "Anna",
            "Lukas",
            "Marie",
            "Jonas",
            "Sofia",
            "Pieter",
            "Camille",
            "Javier",
            "Emma",
            "Tom",
            "Lea",
            "Daan",
            "Lucía",
            "Hugo",
            "Sarah",
            "Mehmet",
        ]
    )


# --------------------------------------------------------------------------------------
# Ticket templates: TICKETS[lang][category] -> list of sentence templates.
# Slots: {order} {inv} {amt} {amt2} {err} {ver} {n} {date} {fmt} {os} {browser} {feature} {method}
# --------------------------------------------------------------------------------------

FORMATS = ["CSV", "PDF", "XLSX", "JSON"]
OSES = ["Windows 11", "macOS Sonoma", "Ubuntu 22.04", "iOS 17", "Android 14", "Windows 10"]
BROWSERS = ["Chrome", "Firefox", "Safari", "Edge"]

SLOT_LISTS = {
    "en": {
        "feature": [
            "dark mode",
            "a bulk edit option",
            "Slack integration",
            "an API for reports",
            "SSO with Okta",
            "recurring invoices",
            "custom fields on contacts",
            "an offline mode for the app",
            "scheduled exports",
            "a Zapier connector",
        ],
        "method": ["PayPal", "SEPA direct debit", "Apple Pay", "bank transfer", "American Express"],
    },
    "de": {
        "feature": [
            "einen Dunkelmodus",
            "eine Massenbearbeitung",
            "eine Slack-Integration",
            "eine API für Berichte",
            "SSO mit Azure AD",
            "wiederkehrende Rechnungen",
            "eigene Felder bei Kontakten",
            "geplante Exporte",
            "einen DATEV-Export",
        ],
        "method": ["PayPal", "SEPA-Lastschrift", "Überweisung", "Kreditkarte", "Rechnungskauf"],
    },
    "fr": {
        "feature": [
            "un mode sombre",
            "la modification en masse",
            "une intégration Slack",
            "une API pour les rapports",
            "le SSO",
            "des factures récurrentes",
            "des exports planifiés",
            "des champs personnalisés",
        ],
        "method": ["PayPal", "prélèvement SEPA", "virement bancaire", "carte bancaire"],
    },
    "es": {
        "feature": [
            "un modo oscuro",
            "edición masiva",
            "integración con Slack",
            "una API para informes",
            "inicio de sesión único (SSO)",
            "facturas recurrentes",
            "exportaciones programadas",
            "campos personalizados",
        ],
        "method": [
            "PayPal",
            "domiciliación SEPA",
            "transferencia bancaria",
            "tarjeta de crédito",
            "Bizum",
        ],
    },
    "nl": {
        "feature": [
            "een donkere modus",
            "bulkbewerking",
            "een Slack-koppeling",
            "een API voor rapporten",
            "SSO",
            "terugkerende facturen",
            "geplande exports",
            "eigen velden bij contacten",
        ],
        "method": ["iDEAL", "PayPal", "SEPA-incasso", "bankoverschrijving", "creditcard"],
    },
}

TICKETS: dict[str, dict[str, list[str]]] = {
    "en": {
        "billing": [
            "I was charged twice for order {order} ({amt} each). Please refund the duplicate charge.",
            "Our invoice {inv} shows {amt} but our plan should cost {amt2}. Can you check what went wrong?",
            "The VAT number on invoice {inv} is missing, our accounting team cannot book it without it.",
            "I cancelled my subscription on {date} but I was still billed {amt} this month. I want a refund.",
            "How do I switch the payment method from credit card to {method}?",
            "Can you send me a corrected invoice with our new company address? The old one is on {inv}.",
            "We got a reverse-charge invoice but we are a German company, so VAT should have been added. Please reissue.",
            "My card was declined when renewing, but the bank says everything is fine. The renewal was {amt}.",
            "Where can I download all invoices for last year? I need them for the tax return.",
            "You charged {amt} for {n} seats but we only have {n2} active users. Please adjust the bill.",
            "The refund for order {order} was promised {days} days ago and still hasn't arrived on my account.",
            "Is it possible to pay yearly instead of monthly, and is there a discount?",
        ],
        "bug": [
            "The app crashes every time I open the reports page on {os}.",
            "Exporting to {fmt} fails with error {err}. It worked fine last week.",
            "Since the update to version {ver} the dashboard stays blank in {browser}.",
            "When I upload more than {n} contacts the import stops halfway with {err}.",
            "Search returns no results even for contacts I can see in the list.",
            "The mobile app logs me out randomly and then shows error {err}.",
            "Dates in the {fmt} export are shifted by one day, looks like a timezone bug.",
            "Clicking Save on the settings page does nothing, no error, nothing happens.",
            "Attachments larger than 10 MB never finish uploading, the progress bar is stuck at 99%.",
            "The sync with our calendar duplicates every event since {date}.",
            "Invoices generated as {fmt} have broken umlauts (ä shows as Ã¤).",
            "Getting {err} when I try to open order {order} in the admin panel.",
        ],
        "account": [
            "I can't log in anymore, it says my password is wrong although I just reset it.",
            "The password reset email never arrives. I checked the spam folder too.",
            "I lost my phone and can't get my 2FA codes. How can I get back into my account?",
            "Please change the email on my account to {person}@{domain}.",
            "My account got locked after too many login attempts. Can you unlock it?",
            "How do I add a second admin to our company account?",
            "I want to delete my account and all my personal data (GDPR).",
            "I changed my email address but I still receive all notifications at the old one.",
            "Our former employee {person} still has access, please remove their user immediately.",
            "The 2FA code from the authenticator app is always rejected as invalid.",
        ],
        "feature_request": [
            "Please add {feature}, we would use it every day.",
            "It would be great if you could offer {feature}.",
            "Any plans to support {feature}? Our team keeps asking for it.",
            "Would be really nice to have {feature}. Right now we do this manually in Excel.",
            "Feature request: {feature}. Happy to beta test it.",
            "Could you add an option to export reports as {fmt}? That would save us a lot of time.",
            "We'd love {feature} — is it on the roadmap?",
        ],
        "other": [
            "Just wanted to say your support team is fantastic, {person} solved our issue in minutes!",
            "What are your office hours? I'd like to call tomorrow morning.",
            "Do you have an office in Berlin or Amsterdam where we could meet?",
            "Great product, we've been using it for {years} years now. Keep it up!",
            "Is there a webinar or training for new users in our team?",
            "Who is the right contact for a partnership inquiry?",
            "Are you open during the Christmas holidays?",
            "Thanks for the quick help yesterday, everything works now.",
            "Where can I find your privacy policy and the list of subprocessors?",
        ],
    },
    "de": {
        "billing": [
            "Mir wurde die Bestellung {order} doppelt abgebucht ({amt}). Bitte erstatten Sie den zweiten Betrag.",
            "Auf der Rechnung {inv} fehlt unsere USt-IdNr., so können wir sie nicht verbuchen.",
            "Ich habe am {date} gekündigt, aber trotzdem wurden {amt} abgebucht. Ich bitte um Erstattung.",
            "Wie kann ich die Zahlungsart auf {method} umstellen?",
            "Die Rechnung {inv} weist {amt} aus, laut Vertrag sind es aber {amt2}. Bitte prüfen.",
            "Bitte schicken Sie uns eine korrigierte Rechnung mit der neuen Firmenadresse.",
            "Die Rückerstattung für {order} ist seit {days} Tagen überfällig.",
            "Wo finde ich alle Rechnungen des letzten Jahres als PDF?",
        ],
        "bug": [
            "Die App stürzt ab, sobald ich die Berichte öffne ({os}).",
            "Der Export als {fmt} bricht mit Fehler {err} ab.",
            "Seit dem Update auf Version {ver} bleibt das Dashboard in {browser} leer.",
            "Beim Import von mehr als {n} Kontakten kommt der Fehler {err}.",
            "Die Umlaute in der {fmt}-Datei sind kaputt, aus ü wird Ã¼.",
            "Der Speichern-Button in den Einstellungen reagiert nicht.",
            "Die Kalendersynchronisation verdoppelt seit dem {date} alle Termine.",
        ],
        "account": [
            "Ich kann mich nicht mehr anmelden, obwohl ich das Passwort gerade zurückgesetzt habe.",
            "Die E-Mail zum Zurücksetzen des Passworts kommt nicht an.",
            "Ich habe mein Handy verloren und komme nicht mehr an meine 2FA-Codes.",
            "Bitte ändern Sie die E-Mail-Adresse meines Kontos auf {person}@{domain}.",
            "Mein Konto ist nach mehreren Fehlversuchen gesperrt. Bitte entsperren.",
            "Bitte löschen Sie mein Konto und alle personenbezogenen Daten gemäß DSGVO.",
            "Ein ehemaliger Mitarbeiter ({person}) hat noch Zugriff, bitte sofort entfernen.",
        ],
        "feature_request": [
            "Bitte fügen Sie {feature} hinzu, das würde uns sehr helfen.",
            "Es wäre toll, wenn es {feature} gäbe.",
            "Ist {feature} geplant? Unser Team fragt ständig danach.",
            "Wunsch: {feature}. Aktuell machen wir das alles händisch in Excel.",
        ],
        "other": [
            "Wie sind Ihre Öffnungszeiten? Ich würde gerne morgen früh anrufen.",
            "Großes Lob an {person} vom Support, super schnelle Hilfe!",
            "Haben Sie zwischen den Jahren geöffnet?",
            "Gibt es eine Schulung für neue Mitarbeiter?",
            "Wir nutzen das Tool seit {years} Jahren und sind sehr zufrieden. Weiter so!",
        ],
    },
    "fr": {
        "billing": [
            "J'ai été débité deux fois pour la commande {order} ({amt}). Merci de rembourser le doublon.",
            "Il manque notre numéro de TVA sur la facture {inv}.",
            "J'ai résilié le {date} mais {amt} ont encore été prélevés. Je demande un remboursement.",
            "Comment passer au paiement par {method} ?",
            "La facture {inv} indique {amt} au lieu de {amt2}. Pouvez-vous vérifier ?",
            "Le remboursement de la commande {order} n'est toujours pas arrivé après {days} jours.",
        ],
        "bug": [
            "L'application plante dès que j'ouvre les rapports sous {os}.",
            "L'export {fmt} échoue avec l'erreur {err}.",
            "Depuis la mise à jour {ver}, le tableau de bord reste vide dans {browser}.",
            "L'import de plus de {n} contacts s'arrête avec l'erreur {err}.",
            "Le bouton Enregistrer ne fait rien dans les paramètres.",
        ],
        "account": [
            "Je n'arrive plus à me connecter alors que je viens de réinitialiser mon mot de passe.",
            "Je ne reçois pas l'e-mail de réinitialisation du mot de passe.",
            "J'ai perdu mon téléphone et je n'ai plus accès à la double authentification.",
            "Merci de changer l'adresse e-mail de mon compte en {person}@{domain}.",
            "Mon compte est bloqué après plusieurs tentatives de connexion.",
        ],
        "feature_request": [
            "Merci d'ajouter {feature}, ce serait très utile.",
            "Ce serait génial d'avoir {feature}.",
            "Est-ce que {feature} est prévu ? Toute l'équipe le demande.",
        ],
        "other": [
            "Quels sont vos horaires d'ouverture ?",
            "Bravo à {person} du support, problème réglé en quelques minutes !",
            "Avez-vous un bureau à Paris ?",
            "Nous utilisons votre outil depuis {years} ans, merci pour tout.",
        ],
    },
    "es": {
        "billing": [
            "Me han cobrado dos veces el pedido {order} ({amt}). Por favor, devuelvan el cargo duplicado.",
            "En la factura {inv} falta nuestro NIF/IVA.",
            "Cancelé la suscripción el {date} y aun así me cobraron {amt}. Quiero un reembolso.",
            "¿Cómo cambio el método de pago a {method}?",
            "La factura {inv} pone {amt} pero deberían ser {amt2}. ¿Pueden revisarlo?",
            "El reembolso del pedido {order} sigue sin llegar después de {days} días.",
        ],
        "bug": [
            "La aplicación se cierra cada vez que abro los informes en {os}.",
            "La exportación a {fmt} falla con el error {err}.",
            "Desde la actualización {ver} el panel aparece en blanco en {browser}.",
            "Al importar más de {n} contactos aparece el error {err}.",
            "El botón Guardar de la configuración no hace nada.",
        ],
        "account": [
            "No puedo iniciar sesión aunque acabo de restablecer la contraseña.",
            "No me llega el correo para restablecer la contraseña.",
            "He perdido el móvil y no tengo acceso a los códigos de 2FA.",
            "Por favor cambien el correo de mi cuenta a {person}@{domain}.",
            "Mi cuenta está bloqueada tras varios intentos fallidos.",
        ],
        "feature_request": [
            "Por favor, añadan {feature}, lo usaríamos a diario.",
            "Sería genial poder tener {feature}.",
            "¿Tienen previsto {feature}? Nuestro equipo lo pide mucho.",
        ],
        "other": [
            "¿Cuál es su horario de atención?",
            "Muchas gracias a {person} del soporte, ¡lo resolvió enseguida!",
            "¿Tienen oficina en Madrid o Barcelona?",
            "Llevamos {years} años usando la herramienta y estamos encantados.",
        ],
    },
    "nl": {
        "billing": [
            "Bestelling {order} is twee keer afgeschreven ({amt}). Graag de dubbele betaling terugstorten.",
            "Op factuur {inv} ontbreekt ons btw-nummer.",
            "Ik heb op {date} opgezegd maar er is toch {amt} afgeschreven. Ik wil mijn geld terug.",
            "Hoe kan ik de betaalmethode wijzigen naar {method}?",
            "Factuur {inv} vermeldt {amt} in plaats van {amt2}. Kunnen jullie dat controleren?",
            "De terugbetaling voor {order} is na {days} dagen nog steeds niet binnen.",
        ],
        "bug": [
            "De app crasht zodra ik de rapporten open op {os}.",
            "Exporteren naar {fmt} mislukt met foutcode {err}.",
            "Sinds de update naar {ver} blijft het dashboard leeg in {browser}.",
            "Bij het importeren van meer dan {n} contacten krijg ik {err}.",
            "De knop Opslaan in de instellingen doet niets.",
        ],
        "account": [
            "Ik kan niet meer inloggen, terwijl ik net mijn wachtwoord heb gereset.",
            "De e-mail om mijn wachtwoord te resetten komt niet aan.",
            "Ik ben mijn telefoon kwijt en kan geen 2FA-codes meer ontvangen.",
            "Wilt u het e-mailadres van mijn account wijzigen naar {person}@{domain}?",
            "Mijn account is geblokkeerd na te veel inlogpogingen.",
        ],
        "feature_request": [
            "Graag {feature} toevoegen, dat zouden we dagelijks gebruiken.",
            "Het zou mooi zijn als er {feature} komt.",
            "Staat {feature} op de roadmap? Ons team vraagt er steeds naar.",
        ],
        "other": [
            "Wat zijn jullie openingstijden?",
            "Complimenten voor {person} van de support, super snel geholpen!",
            "Hebben jullie een kantoor in Amsterdam of Utrecht?",
            "We gebruiken de tool al {years} jaar, heel tevreden.",
        ],
    },
}

# Optional greeting / context / closing sentences that lengthen tickets.
OPENERS = {
    "en": ["Hi,", "Hello team,", "Hi there,", "Good morning,", "Dear support,", "hey", "Hello,"],
    "de": ["Hallo,", "Guten Tag,", "Sehr geehrte Damen und Herren,", "Hi,", "Moin,"],
    "fr": ["Bonjour,", "Bonjour à toute l'équipe,", "Salut,", "Madame, Monsieur,"],
    "es": ["Hola,", "Buenos días,", "Estimado equipo de soporte,", "Hola equipo,"],
    "nl": ["Hallo,", "Goedemorgen,", "Beste support,", "Hoi,"],
}
CONTEXT = {
    "en": [
        "We are a team of {n} people and use the tool daily for customer management.",
        "This is the second time I'm writing about this, the first ticket was closed without an answer.",
        "I already tried clearing the cache, logging out and in again, and using a different browser ({browser}).",
        "Our finance department needs this sorted before the end of the month.",
        "My colleague {person} has the same problem on her machine.",
        "We are on the Business plan and have been customers since {year}.",
        "I attached a screenshot, hope that helps.",
        "This is quite urgent because our quarterly closing starts on Monday.",
        "Honestly this is getting frustrating, we pay {amt} per month for this.",
    ],
    "de": [
        "Wir sind ein Team von {n} Leuten und nutzen das Tool täglich.",
        "Ich schreibe bereits zum zweiten Mal, das erste Ticket wurde ohne Antwort geschlossen.",
        "Cache leeren und neu anmelden habe ich schon versucht.",
        "Das ist dringend, weil unser Monatsabschluss ansteht.",
        "Mein Kollege {person} hat dasselbe Problem.",
    ],
    "fr": [
        "Nous sommes une équipe de {n} personnes et utilisons l'outil tous les jours.",
        "C'est la deuxième fois que j'écris à ce sujet.",
        "J'ai déjà vidé le cache et essayé avec un autre navigateur.",
        "C'est assez urgent pour notre clôture mensuelle.",
    ],
    "es": [
        "Somos un equipo de {n} personas y usamos la herramienta a diario.",
        "Es la segunda vez que escribo sobre esto.",
        "Ya he probado a borrar la caché y a usar otro navegador.",
        "Es bastante urgente porque tenemos el cierre de mes.",
    ],
    "nl": [
        "We zijn een team van {n} mensen en gebruiken de tool dagelijks.",
        "Dit is de tweede keer dat ik hierover mail.",
        "Cache legen en opnieuw inloggen heb ik al geprobeerd.",
        "Het is vrij dringend vanwege onze maandafsluiting.",
    ],
}
CLOSERS = {
    "en": [
        "Thanks!",
        "Thanks in advance.",
        "Best regards, {person}",
        "Cheers",
        "thx",
        "Kind regards,\n{person}",
        "Please get back to me asap.",
        "Regards, {person} ({company})",
    ],
    "de": [
        "Danke!",
        "Vielen Dank im Voraus.",
        "Mit freundlichen Grüßen, {person}",
        "Viele Grüße\n{person}",
        "Bitte um schnelle Rückmeldung.",
    ],
    "fr": ["Merci !", "Merci d'avance.", "Cordialement, {person}", "Bonne journée."],
    "es": ["¡Gracias!", "Gracias de antemano.", "Un saludo, {person}", "Saludos cordiales."],
    "nl": ["Bedankt!", "Alvast bedankt.", "Met vriendelijke groet, {person}", "Groetjes"],
}

DOMAINS = ["example.com", "example.org", "mail.example", "firma.example", "empresa.example"]


def fill(template: str, lang: str, comp: str) -> str:
    slots = SLOT_LISTS[lang]
    n = int(count_n())
    values = {
        "order": order_no(),
        "inv": invoice_no(),
        "amt": amount(lang),
        "amt2": amount(lang),
        "err": error_code(),
        "ver": version(),
        "n": str(n),
        "n2": str(max(1, n - rng.randint(1, 3))),
        "date": date_str(lang),
        "fmt": pick(FORMATS),
        "os": pick(OSES),
        "browser": pick(BROWSERS),
        "feature": pick(slots["feature"]),
        "method": pick(slots["method"]),
        "person": person(),
        "domain": pick(DOMAINS),
        "days": str(rng.randint(5, 30)),
        "years": str(rng.randint(2, 9)),
        "year": str(rng.randint(2015, 2024)),
        "company": comp,
    }
    # "shows X but should be Y": a different value written in the same currency style.
    digits = lambda a: "".join(ch for ch in a if ch.isdigit())  # noqa: E731
    style = lambda a: "".join(ch for ch in a if not ch.isdigit())  # noqa: E731
    while digits(values["amt2"]) == digits(values["amt"]) or style(values["amt2"]) != style(
        values["amt"]
    ):
        values["amt2"] = amount(lang)
    out = template.format(**values)
    # "{person}@{domain}" should look like an address.
    return out.replace(values["person"] + "@", values["person"].lower().replace("í", "i") + "@")


def typo(text: str) -> str:
    """Introduce one realistic typo: swap, drop or double a letter inside a longer word."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if len(w) > 4 and w.isalpha()]
    if not candidates:
        return text
    i = pick(candidates)
    w = words[i]
    j = rng.randrange(1, len(w) - 2)
    kind = rng.randrange(3)
    if kind == 0:
        w = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    elif kind == 1:
        w = w[:j] + w[j + 1 :]
    else:
        w = w[:j] + w[j] + w[j:]
    words[i] = w
    return " ".join(words)


TICKET_CATEGORIES = ["billing", "bug", "account", "feature_request", "other"]
TICKET_CAT_WEIGHTS = [28, 26, 20, 14, 12]


def make_ticket_text(lang: str, comp: str) -> str:
    cat = rng.choices(TICKET_CATEGORIES, TICKET_CAT_WEIGHTS)[0]
    templates = TICKETS[lang][cat]
    sentences: list[str] = [fill(pick(templates), lang, comp)]
    # Occasionally a second issue sentence from the same category (still one label).
    if rng.random() < 0.2:
        extra = fill(pick(templates), lang, comp)
        if extra != sentences[0]:
            sentences.append(extra)
    long_ticket = rng.random() < 0.12
    n_context = rng.randint(3, 5) if long_ticket else (1 if rng.random() < 0.3 else 0)
    for ctx in rng.sample(CONTEXT[lang], min(n_context, len(CONTEXT[lang]))):
        sentences.insert(rng.randint(0, len(sentences)), fill(ctx, lang, comp))
    if long_ticket and lang == "en":
        sentences.append(
            fill(
                "For reference: account owner is {person}, company {company}, the last order was {order} "
                "and the most recent invoice {inv} over {amt}.",
                lang,
                comp,
            )
        )
    # Keep long tickets under ~800 characters by dropping whole context sentences.
    while len(" ".join(sentences)) > 720 and len(sentences) > 1:
        sentences.pop(rng.randrange(len(sentences) - 1))
    text = " ".join(sentences)
    if rng.random() < 0.55:
        text = pick(OPENERS[lang]) + pick(["\n", "\n\n", " "]) + text
    if rng.random() < 0.5:
        text = text + pick([" ", "\n"]) + fill(pick(CLOSERS[lang]), lang, comp)
    # Noise
    if (lang == "en" and rng.random() < 0.18) or rng.random() < 0.06:
        text = typo(text)
    if rng.random() < 0.08:
        text = text.lower()
    if rng.random() < 0.1:
        text = text.rstrip(".!") + pick(["!!", "!!!", " ??", "..."])
    if rng.random() < 0.1:
        text = text + " " + pick(EMOJIS)
    return text[:800].rstrip()


def gen_tickets() -> list[dict[str, str]]:
    n_en = round(N_TICKETS * 0.6)
    other = ["de", "fr", "es", "nl"]
    langs = ["en"] * n_en + [other[i % 4] for i in range(N_TICKETS - n_en)]
    rng.shuffle(langs)
    rows, seen = [], set()
    for i, lang in enumerate(langs, start=1):
        comp = company(lang)
        text = make_ticket_text(lang, comp)
        while text in seen:
            text = make_ticket_text(lang, comp)
        seen.add(text)
        rows.append(
            {
                "id": f"T-{i:04d}",
                "text": text,
                "lang": lang,
                "customer": comp,
                "channel": rng.choices(CHANNELS, CHANNEL_WEIGHTS)[0],
            }
        )
    return rows


# --------------------------------------------------------------------------------------
# Comments (moderation demo). Problematic content is deliberately mild / PG-13.
# --------------------------------------------------------------------------------------

PRODUCTS = {
    "en": [
        "the new update",
        "the mobile app",
        "the dark theme",
        "this release",
        "the export feature",
        "version 5",
        "the redesign",
    ],
    "de": [
        "das neue Update",
        "die App",
        "das dunkle Design",
        "dieses Release",
        "die Exportfunktion",
        "das Redesign",
    ],
    "fr": ["la nouvelle mise à jour", "l'appli", "le thème sombre", "cette version", "la refonte"],
    "es": ["la nueva actualización", "la app", "el tema oscuro", "esta versión", "el rediseño"],
}

BENIGN = {
    "en": [
        "Honestly {p} is a big improvement, loading feels much faster.",
        "Not a fan of {p}, the buttons are too small on my phone.",
        "Does anyone know if {p} works offline?",
        "How do I turn off the email notifications after {p}?",
        "I tried {p} yesterday and it's solid. Five stars from me.",
        "Why did they move the settings menu again? Took me ten minutes to find it 😅",
        "My cat walked over the keyboard and accidentally filed a bug report. Still more useful than my reports.",
        "Anyone else waiting for the Linux version?",
        "{p} is fine but the price went up again, which is a bit annoying.",
        "Thanks to whoever wrote the help article on exports, saved my afternoon.",
        "Is there a student discount?",
        "I've been using this for {y} years and {p} is the best change so far.",
        "Bug or feature: the progress bar goes backwards sometimes lol",
        "Could the team share a roadmap? Would love to know what's next.",
        "Pro tip: you can press Ctrl+K to open the search. Took me way too long to discover.",
        "Joke of the day: my code doesn't have bugs, it has surprise features.",
        "Disagree with the comment above, {p} works great for me on Android.",
        "Great community here, thanks for all the answers!",
    ],
    "de": [
        "Ehrlich gesagt ist {p} eine große Verbesserung.",
        "{p} gefällt mir nicht, die Schrift ist viel zu klein.",
        "Weiß jemand, ob {p} auch offline funktioniert?",
        "Wie schalte ich die E-Mail-Benachrichtigungen ab?",
        "Nutze das Tool seit {y} Jahren, {p} ist top.",
        "Warum ist das Menü schon wieder woanders? 😅",
        "Gibt es einen Rabatt für Vereine?",
        "Danke für die schnelle Antwort gestern!",
    ],
    "fr": [
        "Franchement {p} est une belle amélioration.",
        "Je n'aime pas trop {p}, les boutons sont minuscules.",
        "Quelqu'un sait si {p} marche hors ligne ?",
        "Merci pour le tuto sur les exports, super utile.",
        "Blague du jour : mon code n'a pas de bugs, juste des fonctionnalités surprises.",
        "Ça fait {y} ans que j'utilise l'outil, {p} est top.",
    ],
    "es": [
        "La verdad es que {p} está muy bien, va mucho más rápido.",
        "No me convence {p}, los botones son muy pequeños.",
        "¿Alguien sabe si {p} funciona sin conexión?",
        "Gracias por el tutorial de exportación, me salvó la tarde.",
        "Llevo {y} años usándolo y {p} es lo mejor hasta ahora.",
        "¿Hay descuento para estudiantes?",
    ],
}

# category -> lang -> templates
PROBLEMATIC: dict[str, dict[str, list[str]]] = {
    "harassment": {
        "en": [
            "@{u} you are an idiot, nobody asked for your opinion.",
            "Wow, what a clown. Do everyone a favour and stop posting, {u}.",
            "{u} is the dumbest person on this forum, seriously.",
            "Shut up {u}, you clearly have no clue what you're talking about.",
        ],
        "de": [
            "@{u} du bist echt ein Idiot, niemand will deine Meinung hören.",
            "Halt einfach die Klappe, {u}.",
        ],
        "fr": [
            "@{u} t'es vraiment un idiot, personne ne t'a rien demandé.",
            "Tais-toi {u}, tu ne sais pas de quoi tu parles.",
        ],
        "es": [
            "@{u} eres un idiota, nadie te ha preguntado.",
            "Cállate ya {u}, no tienes ni idea.",
        ],
    },
    "spam": {
        "en": [
            "Buy cheap followers at http://spam.example/followers !!! 10k for $5",
            "Make $500/day from home, click http://spam.example/cash now",
            "🔥 FREE gift cards 🔥 visit http://spam.example/gift before it's gone",
            "Best crypto signals, join http://spam.example/signals, 1000% guaranteed",
        ],
        "de": [
            "Günstige Follower kaufen unter http://spam.example/follower !!!",
            "500 € am Tag von zu Hause verdienen: http://spam.example/geld",
        ],
        "fr": [
            "Achetez des followers pas chers sur http://spam.example/abonnes !!!",
            "Gagnez 500 € par jour : http://spam.example/argent",
        ],
        "es": [
            "Compra seguidores baratos en http://spam.example/seguidores !!!",
            "Gana 500 € al día desde casa: http://spam.example/dinero",
        ],
    },
    "violence": {
        "en": [
            "{u}, if I ever meet you I will hurt you.",
            "Keep talking like that and you'll get what's coming to you, {u}.",
            "I know where your office is, {u}. Watch yourself.",
        ],
        "de": [
            "{u}, wenn ich dich erwische, tu ich dir weh.",
            "Pass bloß auf, {u}, ich weiß, wo du arbeitest.",
        ],
        "fr": ["{u}, si je te croise, je vais te faire mal."],
        "es": ["{u}, si te encuentro te voy a hacer daño."],
    },
    "hate": {
        "en": [
            "People like you don't belong here, go back where you came from.",
            "Typical, your kind always ruins every community.",
            "Nobody from your country should be allowed on this forum.",
        ],
        "de": [
            "Leute wie du gehören hier nicht hin.",
            "Typisch, Leute von deiner Sorte machen alles kaputt.",
        ],
        "fr": ["Les gens comme toi n'ont rien à faire ici."],
        "es": ["La gente como tú no pinta nada aquí."],
    },
    "self_harm": {
        "en": [
            "Honestly some days I want to hurt myself, this app is the least of my problems.",
            "I feel like nobody would notice if I was gone.",
            "Lately I've been thinking about hurting myself again.",
        ],
        "de": ["Manchmal will ich mir einfach selbst wehtun."],
        "fr": ["Parfois j'ai envie de me faire du mal."],
        "es": ["A veces tengo ganas de hacerme daño."],
    },
    "sexual": {
        "en": [
            "Hey {u}, nice profile pic 😏 DM me if you want to have some 'fun' tonight.",
            "That new feature is sexier than my ex, if you know what I mean 😉",
            "{u} you look hot, send me more pics 😏",
        ],
        "de": [
            "Na {u}, schickes Profilbild 😏 Schreib mir privat, dann haben wir heute Abend Spaß."
        ],
        "fr": ["Salut {u}, jolie photo 😏 écris-moi en privé si tu veux t'amuser ce soir."],
        "es": ["Hola {u}, qué foto tan sexy 😏 escríbeme por privado esta noche."],
    },
}
PROBLEM_CAT_WEIGHTS = {
    "harassment": 30,
    "spam": 24,
    "violence": 14,
    "hate": 12,
    "self_harm": 10,
    "sexual": 10,
}

USERNAMES = [
    "mike_88",
    "dataqueen",
    "Jens",
    "lucie.m",
    "pablo_dev",
    "nerdalert",
    "Kim",
    "alex2000",
    "sam_k",
    "FrankTheTank",
    "moni",
    "tobi",
]


def make_comment(lang: str, bad: bool) -> str:
    vals = {"p": pick(PRODUCTS[lang]), "u": pick(USERNAMES), "y": str(rng.randint(2, 8))}
    if bad:
        cats = list(PROBLEM_CAT_WEIGHTS)
        cat = rng.choices(cats, list(PROBLEM_CAT_WEIGHTS.values()))[0]
        t = pick(PROBLEMATIC[cat][lang]).format(**vals)
        # Sometimes the nasty bit is wrapped in an otherwise on-topic comment.
        if rng.random() < 0.3:
            t = pick(BENIGN[lang]).format(**vals) + " " + t
    else:
        t = pick(BENIGN[lang]).format(**vals)
        if rng.random() < 0.25:
            t = t + " " + pick(BENIGN[lang]).format(**vals)
    t = t[0].upper() + t[1:]
    if rng.random() < 0.08:
        t = t + " " + pick(EMOJIS)
    if lang == "en" and rng.random() < 0.1:
        t = typo(t)
    return t


def gen_comments() -> list[dict[str, str]]:
    langs_w = {"en": 55, "de": 18, "fr": 13, "es": 14}
    n_bad = round(N_COMMENTS * 0.25)
    flags = [True] * n_bad + [False] * (N_COMMENTS - n_bad)
    rng.shuffle(flags)
    rows, seen = [], set()
    for i, bad in enumerate(flags, start=1):
        lang = rng.choices(list(langs_w), list(langs_w.values()))[0]
        text = make_comment(lang, bad)
        while text in seen:
            text = make_comment(lang, bad)
        seen.add(text)
        rows.append(
            {
                "id": f"C-{i:03d}",
                "text": text,
                "lang": lang,
                "thread": f"thread-{rng.randint(1, 20):02d}",
            }
        )
    return rows


# --------------------------------------------------------------------------------------
# Product texts (translation demo): placeholders, tags, URLs, numbers, "Acme".
# --------------------------------------------------------------------------------------

HELP_URLS = [
    "https://acme.example/help",
    "https://acme.example/help/returns",
    "https://acme.example/account",
    "https://acme.example/orders/{order_id}",
    "https://acme.example/privacy",
    "https://acme.example/shipping",
]
PRICES = ["€9.99", "€19.90", "€49.90", "€4.95", "€129.00", "€0.99", "€250"]
ITEMS = [
    "Acme Kettle Pro",
    "Acme Trail Backpack 28L",
    "Acme Desk Lamp",
    "Acme Coffee Grinder",
    "Acme Wireless Earbuds",
    "Acme Yoga Mat",
    "Acme Chef's Knife 20 cm",
    "Acme Smart Plug (2-pack)",
]

PRODUCT_TEMPLATES: dict[str, list[str]] = {
    "checkout": [
        "Your cart contains {count} items. Total: <b>{price}</b>",
        "Free shipping on orders over {price}!",
        "Apply a promo code",
        "Pay securely with Acme Pay",
        'By placing your order you agree to the <a href="{url}">Acme terms of service</a>.',
        "Only {n} left in stock – order within {hours} hours for delivery tomorrow.",
        "Your card ending in {card} will be charged <b>{price}</b>.",
        "Delivery to {customer_name}, {city}",
        "Save {percent}% with an Acme Plus membership.",
        'Something went wrong with your payment. Please try again or contact <a href="{url}">Acme support</a>.',
        "Estimated delivery: {n}–{m} business days",
        "Gift wrapping (+{price})",
        "<b>Secure checkout.</b> Your data is encrypted.",
        "Order {order_id} summary",
    ],
    "email": [
        "Hi {customer_name}, thanks for your order {order_id}! We'll let you know when it ships.",
        "Good news, {customer_name}: your Acme order {order_id} is on its way. Track it here: {url}",
        "Your refund of <b>{price}</b> for order {order_id} has been processed. It can take up to {n} business days to appear on your statement.",
        "Hi {customer_name}, you left {count} items in your cart. Complete your order now and get {percent}% off with code <b>ACME{percent}</b>.",
        "Welcome to Acme, {customer_name}! <p>Set up your account in {n} minutes: {url}</p>",
        "Your Acme Plus membership renews on {date} for {price}. Manage it at {url}",
        "We received your return for order {order_id}. Questions? Visit {url}",
        "Your password was changed. If this wasn't you, reset it immediately at https://acme.example/account/reset.",
        "<b>{customer_name}</b>, your review helps other Acme customers. Rate your {item} in 1 minute.",
        "Reminder: your invoice {invoice_id} over {price} is due on {date}.",
        "Happy birthday, {customer_name}! 🎉 Here's {percent}% off your next Acme order.",
    ],
    "product_page": [
        "The {item} is built to last: {n}-year warranty included.",
        "<b>{item}</b> – now only {price} (was {price2})",
        "Rated {rating} out of 5 by {count} customers",
        "Dishwasher-safe. Weight: {weight} g. Made with {percent}% recycled materials.",
        "Need help choosing? Compare models at {url}",
        "<ul><li>{n} speed settings</li><li>Auto shut-off</li><li>{n2}-year Acme warranty</li></ul>",
        'Free returns within {days} days. See <a href="https://acme.example/help/returns">return policy</a>.',
        "Customers who bought this also bought the {item}.",
        "Ships in {n}–{m} days from our warehouse in Rotterdam.",
        "Battery life: up to {hours} hours. Charging time: {n} hours.",
        "<i>Limited edition:</i> only {count} pieces available.",
        "Capacity: {liters} L – perfect for {n} to {m} people.",
    ],
    "app": [
        "Welcome back, {customer_name}!",
        "You have {count} new notifications",
        "Tap <b>Save</b> to keep your changes.",
        "Are you sure you want to delete {count} items? This cannot be undone.",
        "Sync failed. Check your connection and try again.",
        "Update available: Acme {version}",
        "Sign in with your Acme account",
        "Forgot your password?",
        "{count} of {total} files uploaded",
        "Your session expires in {n} minutes.",
        "Enable notifications to get updates on order {order_id}.",
        'Storage almost full: {percent}% used. <a href="{url}">Upgrade now</a>',
        "Settings",
        "Log out",
        "Rate Acme in the app store ⭐",
    ],
}
SURFACE_WEIGHTS = {"checkout": 35, "email": 40, "product_page": 40, "app": 35}


def gen_product_texts() -> list[dict[str, str]]:
    # Build every (surface, template) pair once, then add slot-filled variants until N.
    surfaces = list(SURFACE_WEIGHTS)
    rows, seen = [], set()

    def render(tpl: str) -> str:
        vals = {
            "price": pick(PRICES),
            "url": pick(HELP_URLS),
            "n": str(rng.randint(2, 5)),
            "m": str(rng.randint(6, 9)),
            "n2": str(rng.randint(2, 3)),
            "hours": str(rng.choice([4, 8, 12, 24, 36])),
            "card": f"{rng.randint(0, 9999):04d}",
            "percent": str(rng.choice([5, 10, 15, 20, 25, 30])),
            "date": pick(["March 3, 2026", "2026-04-15", "June 30", "1 July 2026"]),
            "item": pick(ITEMS),
            "rating": pick(["4.2", "4.5", "4.8", "3.9"]),
            "weight": str(rng.choice([180, 450, 820, 1250])),
            "days": str(rng.choice([14, 30, 100])),
            "liters": pick(["1.2", "1.7", "0.5", "28"]),
            "version": f"{rng.randint(3, 6)}.{rng.randint(0, 9)}",
            "city": pick(["Berlin", "Munich", "Vienna", "Zurich", "Hamburg"]),
            "invoice_id": f"INV-{rng.randint(10000, 99999)}",
            # Placeholders that must survive translation are kept literally.
            "customer_name": "{customer_name}",
            "order_id": "{order_id}",
            "count": "{count}" if rng.random() < 0.7 else str(rng.randint(2, 500)),
            "total": "{total}",
        }
        # "now only {price} (was {price2})": the old price is always the higher one.
        vals["price2"] = pick(
            [p for p in PRICES if float(p.strip("€")) > float(vals["price"].strip("€"))]
            or ["€299.00"]
        )
        return tpl.format(**vals)

    pool = [(s, t) for s in surfaces for t in PRODUCT_TEMPLATES[s]]
    rng.shuffle(pool)
    queue = list(pool)
    while len(rows) < N_PRODUCT_TEXTS:
        if queue:
            surface, tpl = queue.pop()
        else:
            surface = rng.choices(surfaces, list(SURFACE_WEIGHTS.values()))[0]
            tpl = pick(PRODUCT_TEMPLATES[surface])
        text = render(tpl)
        if text in seen:
            continue
        seen.add(text)
        rows.append({"id": "", "text": text, "surface": surface})
    rng.shuffle(rows)
    for i, r in enumerate(rows, start=1):
        r["id"] = f"P-{i:03d}"
    return [{"id": r["id"], "text": r["text"], "surface": r["surface"]} for r in rows]


# --------------------------------------------------------------------------------------


def write_jsonl(name: str, rows: list[dict[str, str]]) -> None:
    path = OUT_DIR / name
    body = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n"
    path.write_text(body, encoding="utf-8", newline="\n")
    print(
        f"wrote {path.relative_to(OUT_DIR.parent)}: {len(rows)} rows, {len(body.encode('utf-8'))} bytes"
    )


def main() -> None:
    generators: list[tuple[str, Callable[[], list[dict[str, str]]]]] = [
        ("tickets.jsonl", gen_tickets),
        ("comments.jsonl", gen_comments),
        ("product_texts.jsonl", gen_product_texts),
    ]
    for name, gen in generators:
        write_jsonl(name, gen())


if __name__ == "__main__":
    main()
