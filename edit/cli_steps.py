"""Which steps the command line draws (`--render-steps`), so that a drawing of a long run stays
readable: at the `nodes` and `units` levels a step is a tall block of the picture, and 20 of them
made a 1175x9659 image no screen shows."""

from __future__ import annotations

from edit.cli_checks import CliError

#: At these levels, a plan of more steps than this draws `SPREAD` of them unless told otherwise.
MOST_DRAWN = 6
SPREAD = 5
FLAG = "--render-steps"


def parse(text: str, num_steps: int) -> list[int]:
    """`A:B` (B left out, as in Python), `A:B:STEP`, `A:` (to the end), a list `0,5,10`, or `all`."""
    text = text.strip()
    if text == "all":
        return list(range(num_steps))
    try:
        if ":" in text:
            parts = [p.strip() for p in text.split(":")]
            if len(parts) > 3:
                raise ValueError
            numbers = [int(p) if p else None for p in parts]
            if len(numbers) == 3 and numbers[2] is not None and numbers[2] < 1:
                raise CliError(f"{FLAG}: the step of {text!r} must be >= 1")
            chosen = list(range(num_steps))[slice(*numbers)]
            if any(n is not None and not 0 <= n <= num_steps for n in numbers[:2]):
                raise CliError(f"{FLAG}: {text!r} runs past this run's steps 0..{num_steps - 1}")
        else:
            chosen = sorted({int(p) for p in text.split(",")})
            outside = [s for s in chosen if not 0 <= s < num_steps]
            if outside:
                raise CliError(f"{FLAG}: step {outside[0]} is not in this run (steps 0..{num_steps - 1})")
    except ValueError:
        raise CliError(f"{FLAG}: expected A:B, A:B:STEP, a list such as 0,5,10, or all; got {text!r}") from None
    if not chosen:
        raise CliError(f"{FLAG}: {text!r} selects no step of this run's 0..{num_steps - 1}")
    return chosen


def default(num_steps: int, level: str) -> list[int] | None:
    """None (every step) when the drawing stays readable, else `SPREAD` steps spread over the run,
    the first and last among them."""
    if level == "steps" or num_steps <= MOST_DRAWN:
        return None
    return sorted({round(i * (num_steps - 1) / (SPREAD - 1)) for i in range(SPREAD)})


def choose(text: str | None, num_steps: int, level: str) -> tuple[list[int] | None, str | None]:
    """The steps to draw and, when the default left some out, the note that says so."""
    if text is not None:
        chosen = parse(text, num_steps)
        return (None if len(chosen) == num_steps else chosen), None
    chosen = default(num_steps, level)
    if chosen is None:
        return None, None
    return chosen, (f"drew steps {', '.join(map(str, chosen))} of {num_steps} at level {level} "
                    f"(--render-steps all, or A:B, for others)")
