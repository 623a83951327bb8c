"""From records to the paper: metrics, tables, rendering, figures, the PDF build, and answer
quality with the sandbox its code samples run in."""
