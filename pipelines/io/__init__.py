"""Reading and writing: storage URIs, audio, written scores, performance MIDI, corpora, label tables."""
